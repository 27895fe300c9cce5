//! Integration sources and their webhooks: `/api/v1/sources` (admins define senders and get
//! each one's secret once), `POST /api/v1/integrations/zabbix` (the Zabbix media type; the
//! bearer secret picks the source) and `POST /api/v1/integrations/{source}` (any source by
//! name, checked by its kind's secret or signature), and the events they leave:
//! `/api/v1/events` and `/api/v1/external-nodes`. The webhooks take no API token: a source's
//! secret is its credential. The domain is [`crate::integrations`].

use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::NoContent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vantage_mqtt::{EventSeverity, EventStatus, SourceKind};

use super::openapi::Created;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, Caller, IdPath};
use crate::AppState;
use crate::integrations::{
    self, Credentials, IntegrationError, MAX_CHAIN_BODY_BYTES, MAX_ZABBIX_BODY_BYTES, NewSource,
    RowOutcome,
};
use crate::store::{EventRow, Role, SourceRow};

impl From<IntegrationError> for ApiError {
    fn from(error: IntegrationError) -> Self {
        match error {
            IntegrationError::Invalid(reason) => ApiError::Unprocessable(reason),
            IntegrationError::NotFound(id) => ApiError::NotFound(format!("source {id:?}")),
            IntegrationError::Unauthorized => ApiError::Unauthorized,
            IntegrationError::Malformed(reason) => ApiError::BadRequest(reason),
            IntegrationError::TooLarge(reason) => ApiError::TooLarge(reason),
            IntegrationError::Store(error) => error.into(),
        }
    }
}

/// A source as listed: never its secret.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SourceView {
    pub id: String,
    pub kind: SourceKind,
    /// The severity from which an event opens an incident; `null`: it never opens one.
    pub incident_severity: Option<EventSeverity>,
    pub created_at_ms: i64,
    /// Where its webhook is, under this host.
    pub webhook_path: String,
    /// The poller's URL and interval, never its token.
    pub poll: Option<PollView>,
    pub poll_cursor: Option<i64>,
}

/// A Zabbix source's API poller as listed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PollView {
    pub api_url: String,
    pub interval_s: u32,
}

impl From<&SourceRow> for SourceView {
    fn from(row: &SourceRow) -> Self {
        SourceView {
            id: row.id.clone(),
            kind: row.kind,
            incident_severity: row
                .incident_severity
                .as_deref()
                .and_then(EventSeverity::parse),
            created_at_ms: row.created_at_ms,
            webhook_path: webhook_path(row),
            poll: row.poll_config().map(|p| PollView {
                api_url: p.api_url,
                interval_s: p.interval_s,
            }),
            poll_cursor: row.poll_cursor,
        }
    }
}

/// The answer of `POST /api/v1/sources`: the source with its secret, shown this once (no
/// `Debug`: it holds the secret).
#[derive(Serialize, JsonSchema)]
pub struct CreatedSource {
    #[serde(flatten)]
    pub source: SourceView,
    pub secret: String,
    /// How to point the sender at it.
    pub how: String,
}

/// One row of a webhook's body, as answered.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum WebhookRow {
    Stored {
        event_id: i64,
        /// False.
        duplicate: bool,
        incident_id: Option<String>,
        incident_url: Option<String>,
    },
    /// Stored before: nothing changed.
    Duplicate {
        event_id: i64,
        /// True.
        duplicate: bool,
    },
    Refused {
        error: String,
    },
}

/// The answer of a webhook.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum WebhookAnswer {
    /// Zabbix's media type reads its one row at the top level.
    Zabbix(WebhookRow),
    /// Every other source: counts and one outcome per row, in the body's order.
    Batch {
        stored: usize,
        duplicates: usize,
        refused: usize,
        rows: Vec<WebhookRow>,
    },
}

/// An event, and with `GET /api/v1/events/{id}` the sender's payload.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: vantage_mqtt::SourceEventView,
    /// The sender's body as JSON (a string when it was cut off); only on the single event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_truncated: Option<bool>,
}

fn webhook_path(row: &SourceRow) -> String {
    match row.kind {
        SourceKind::Zabbix if row.id == "zabbix" => "/api/v1/integrations/zabbix".into(),
        _ => format!("/api/v1/integrations/{}", row.id),
    }
}

/// The `{source}` of a webhook's path.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SourcePath {
    pub source: String,
}

/// Body of `POST /api/v1/sources`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSource {
    pub id: String,
    pub kind: SourceKind,
    pub secret: Option<String>,
    pub incident_severity: Option<EventSeverity>,
    /// A Zabbix source's API poller: `{api_url, api_token, interval_s}`.
    pub poll: Option<crate::store::PollConfig>,
}

/// `POST /api/v1/sources`: answers the source with its secret, shown this once.
pub async fn create_source(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateSource>,
) -> Result<Created<CreatedSource>, ApiError> {
    caller.require(Role::Admin)?;
    let row = integrations::create_source(
        &state,
        NewSource {
            id: body.id,
            kind: body.kind,
            secret: body.secret,
            incident_severity: body.incident_severity,
            poll: body.poll,
        },
    )
    .await?;
    let how = match row.kind {
        SourceKind::Zabbix => {
            "Zabbix media type: vantage_endpoint = https://<this host><webhook_path>, vantage_token = secret (sent as Authorization: Bearer)"
        }
        SourceKind::Helius => {
            "Helius webhook: URL https://<this host><webhook_path>, authHeader = secret"
        }
        SourceKind::Alchemy => {
            "Alchemy webhook: URL https://<this host><webhook_path>; its signing key is the secret (X-Alchemy-Signature)"
        }
        SourceKind::Hmac => {
            "POST JSON to https://<this host><webhook_path> with X-Vantage-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>"
        }
    };
    Ok(Created(CreatedSource {
        source: SourceView::from(&row),
        secret: row.secret,
        how: how.into(),
    }))
}

/// `GET /api/v1/sources`.
pub async fn list_sources(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<SourceView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let rows = state.store.list_sources().await?;
    Ok(Json(rows.iter().map(SourceView::from).collect()))
}

/// `DELETE /api/v1/sources/{id}`: its events stay.
pub async fn delete_source(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Admin)?;
    integrations::delete_source(&state, &id).await?;
    Ok(NoContent)
}

/// `POST /api/v1/integrations/zabbix`: the source is the Zabbix source whose secret is the
/// bearer token.
pub async fn zabbix_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WebhookAnswer>, ApiError> {
    webhook(state, None, headers, body).await
}

/// `POST /api/v1/integrations/{source}`.
pub async fn source_webhook(
    State(state): State<AppState>,
    ApiPath(SourcePath { source }): ApiPath<SourcePath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WebhookAnswer>, ApiError> {
    webhook(state, Some(source), headers, body).await
}

async fn webhook(
    state: AppState,
    source_id: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WebhookAnswer>, ApiError> {
    // A Zabbix body is small; chain batches may be large. The source's kind is not known
    // before the body is read (an HMAC covers it), so a named source may send the larger.
    let limit = if source_id.is_none() {
        MAX_ZABBIX_BODY_BYTES
    } else {
        MAX_CHAIN_BODY_BYTES
    };
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        state
            .counters
            .webhooks_oversize
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::TooLarge(format!(
            "body over {limit} bytes (or cut off)"
        )));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let credentials = Credentials {
        authorization: header("authorization"),
        vantage_signature: header("x-vantage-signature"),
        alchemy_signature: header("x-alchemy-signature"),
    };
    let result = async {
        let source =
            integrations::authenticate(&state, source_id.as_deref(), credentials, &bytes).await?;
        let outcomes = integrations::accept(&state, &source, &bytes).await?;
        Ok::<_, IntegrationError>((source, outcomes))
    }
    .await;
    let (source, outcomes) = match result {
        Ok(done) => done,
        Err(error) => {
            integrations::count_refusal(&state, &error);
            return Err(error.into());
        }
    };
    let host = header("host").unwrap_or("<this host>");
    let rows: Vec<WebhookRow> = outcomes
        .iter()
        .map(|outcome| match outcome {
            RowOutcome::Stored { id, incident_id } => WebhookRow::Stored {
                event_id: *id,
                duplicate: false,
                incident_id: incident_id.clone(),
                incident_url: incident_id
                    .as_ref()
                    .map(|i| format!("https://{host}/#/incidents/{i}")),
            },
            RowOutcome::Duplicate { id } => WebhookRow::Duplicate {
                event_id: *id,
                duplicate: true,
            },
            RowOutcome::Refused { reason } => WebhookRow::Refused {
                error: reason.clone(),
            },
        })
        .collect();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, RowOutcome::Refused { .. }))
        .count();
    if refused == outcomes.len() {
        // Nothing stored: the sender's body is wrong, not a partial batch.
        let reason = match rows.first() {
            Some(WebhookRow::Refused { error }) => error.clone(),
            _ => "no events in the body".to_owned(),
        };
        state
            .counters
            .webhooks_malformed
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::BadRequest(reason));
    }
    if source.kind == SourceKind::Zabbix
        && let Some(row) = rows.first()
    {
        // The media type reads incident_id and incident_url from the top level.
        return Ok(Json(WebhookAnswer::Zabbix(row.clone())));
    }
    let stored = outcomes
        .iter()
        .filter(|o| matches!(o, RowOutcome::Stored { .. }))
        .count();
    Ok(Json(WebhookAnswer::Batch {
        stored,
        duplicates: outcomes.len() - stored - refused,
        refused,
        rows,
    }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub source: Option<String>,
    pub status: Option<EventStatus>,
    /// Events stored before this id (the next page).
    pub before: Option<i64>,
    /// Most rows (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<i64>,
}

/// The `{id}` of `/api/v1/events/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EventPath {
    pub id: i64,
}

fn event_detail(row: &EventRow, with_payload: bool) -> EventDetail {
    EventDetail {
        event: row.view(),
        payload: with_payload.then(|| {
            serde_json::from_str(&row.payload).unwrap_or(Value::String(row.payload.clone()))
        }),
        payload_truncated: with_payload.then_some(row.payload_truncated),
    }
}

/// `GET /api/v1/events`: newest first.
pub async fn list_events(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<Vec<EventDetail>>, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-1000".into()));
    }
    let rows = state
        .store
        .list_events(query.source.as_deref(), query.status, query.before, limit)
        .await?;
    Ok(Json(rows.iter().map(|r| event_detail(r, false)).collect()))
}

/// `GET /api/v1/events/{id}`: with the sender's raw payload (bounded).
pub async fn get_event(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(EventPath { id }): ApiPath<EventPath>,
) -> Result<Json<EventDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let row = state
        .store
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("event {id}")))?;
    Ok(Json(event_detail(&row, true)))
}

/// `GET /api/v1/external-nodes`: hosts sources named that map to no agent.
pub async fn external_nodes(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::store::ExternalNodeRow>>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(state.store.list_external_nodes().await?))
}
