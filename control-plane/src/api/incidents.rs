//! Routes for regions, verdicts, incidents, notification channels and the outbox: they check
//! the caller and call [`crate::regions`], [`crate::incidents`] and [`crate::notify`].

use axum::Json;
use axum::extract::State;
use axum::response::NoContent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vantage_mqtt::{CheckVerdictView, IncidentChange};

use super::openapi::Created;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, Caller, IdPath};
use crate::AppState;
use crate::notify::{ChannelDefinition, ChannelError, ChannelSummary};
use crate::store::{IncidentEventRow, IncidentRow, OutboxRow, OutboxState, Role, TransitionRow};

impl From<ChannelError> for ApiError {
    fn from(error: ChannelError) -> Self {
        match error {
            ChannelError::Invalid(reason) => ApiError::Unprocessable(reason),
            ChannelError::NotFound(id) => ApiError::NotFound(format!("channel {id:?}")),
            error @ ChannelError::Corrupt(_) => ApiError::Internal(error.into()),
            error @ ChannelError::Delivery(_) => ApiError::BadGateway(error.to_string()),
            ChannelError::Store(error) => error.into(),
        }
    }
}

/// `GET /api/v1/regions`: each region's agents, online count, checks and fallback.
pub async fn regions(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::regions::RegionView>>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(crate::regions::list(&state.store).await?))
}

/// `GET /api/v1/verdicts`: every check's current verdict with its evidence.
pub async fn verdicts(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<CheckVerdictView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut views = state.store.list_verdicts().await?;
    if caller.role == Role::Viewer {
        for view in &mut views {
            view.reason = vantage_mqtt::redact::scrub_text(&view.reason).into_owned();
            for region in &mut view.regions {
                if let Some(last) = &mut region.last {
                    last.reason = vantage_mqtt::redact::scrub_text(&last.reason).into_owned();
                }
            }
        }
    }
    Ok(Json(views))
}

/// `GET /api/v1/checks/{id}/transitions`: the check's state changes, newest first.
pub async fn transitions(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<Json<Vec<TransitionRow>>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut rows = state.store.list_transitions(&id, 500).await?;
    if caller.role == Role::Viewer {
        for row in &mut rows {
            row.reason = vantage_mqtt::redact::scrub_text(&row.reason).into_owned();
            row.evidence = vantage_mqtt::redact::scrub_text(&row.evidence).into_owned();
        }
    }
    Ok(Json(rows))
}

/// Query of `GET /api/v1/incidents`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// Only open incidents.
    #[serde(default)]
    pub open: bool,
    /// Most rows (default 100).
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: i64,
}

fn default_limit() -> i64 {
    100
}

/// `GET /api/v1/incidents[?open=true&limit=N]`: newest first.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<IncidentQuery>,
) -> Result<Json<Vec<IncidentRow>>, ApiError> {
    caller.require(Role::Viewer)?;
    if !(1..=10_000).contains(&query.limit) {
        return Err(ApiError::BadRequest("limit must be 1..=10000".into()));
    }
    Ok(Json(
        state.store.list_incidents(query.open, query.limit).await?,
    ))
}

/// `GET /api/v1/incidents/{id}`: the incident and its timeline.
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<Json<IncidentDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let incident = state
        .store
        .get_incident(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("incident {id:?}")))?;
    let mut timeline = state.store.incident_events(&id).await?;
    if caller.role == Role::Viewer {
        for event in &mut timeline {
            event.text = vantage_mqtt::redact::scrub_text(&event.text).into_owned();
        }
    }
    Ok(Json(IncidentDetail { incident, timeline }))
}

/// `GET /api/v1/incidents/{id}`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct IncidentDetail {
    pub incident: IncidentRow,
    /// Oldest first.
    pub timeline: Vec<IncidentEventRow>,
}

/// `POST /api/v1/channels/{id}/test`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Delivered {
    /// Always true: a failed delivery is a 502.
    pub delivered: bool,
}

/// Body of `POST /api/v1/incidents/{id}/notes`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    pub text: String,
}

/// `POST /api/v1/incidents/{id}/ack`: acknowledges (operators and above).
pub async fn acknowledge(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<Json<IncidentRow>, ApiError> {
    caller.require(Role::Operator)?;
    let author = format!("token {}", caller.token_id);
    let row = crate::incidents::annotate(
        &state,
        &id,
        IncidentChange::Acknowledged,
        &format!("acknowledged by {author}"),
        &author,
    )
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("incident {id:?}")))?;
    Ok(Json(row))
}

/// `POST /api/v1/incidents/{id}/notes`: adds a note to the timeline.
pub async fn note(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
    ApiJson(body): ApiJson<NoteBody>,
) -> Result<Created<IncidentRow>, ApiError> {
    caller.require(Role::Operator)?;
    let text = body.text.trim();
    if text.is_empty() || text.len() > 4096 {
        return Err(ApiError::Unprocessable(
            "text must be 1 to 4096 bytes".into(),
        ));
    }
    let author = format!("token {}", caller.token_id);
    let row = crate::incidents::annotate(&state, &id, IncidentChange::Note, text, &author)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("incident {id:?}")))?;
    Ok(Created(row))
}

/// `GET /api/v1/channels`: channels without their secrets (operators and above).
pub async fn list_channels(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<ChannelSummary>>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(crate::notify::list_channels(&state).await?))
}

/// `POST /api/v1/channels`: creates a channel (admins).
pub async fn create_channel(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChannelDefinition>,
) -> Result<Created<ChannelSummary>, ApiError> {
    caller.require(Role::Admin)?;
    if let Some(id) = &body.id
        && state.store.get_channel(id).await?.is_some()
    {
        return Err(ApiError::Conflict(format!("channel {id:?} already exists")));
    }
    let summary = crate::notify::put_channel(&state, None, body).await?;
    Ok(Created(summary))
}

/// `PUT /api/v1/channels/{id}`: replaces a channel (admins).
pub async fn put_channel(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
    ApiJson(body): ApiJson<ChannelDefinition>,
) -> Result<Json<ChannelSummary>, ApiError> {
    caller.require(Role::Admin)?;
    if body.id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiError::Unprocessable(
            "the body's id differs from the path's".into(),
        ));
    }
    Ok(Json(
        crate::notify::put_channel(&state, Some(&id), body).await?,
    ))
}

/// `DELETE /api/v1/channels/{id}` (admins).
pub async fn delete_channel(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Admin)?;
    crate::notify::delete_channel(&state, &id).await?;
    Ok(NoContent)
}

/// `POST /api/v1/channels/{id}/test`: sends a test notification now; 502 with the reason
/// when the receiver did not take it.
pub async fn test_channel(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<Json<Delivered>, ApiError> {
    caller.require(Role::Operator)?;
    crate::notify::test_channel(&state, &id).await?;
    Ok(Json(Delivered { delivered: true }))
}

/// Query of `GET /api/v1/outbox`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    #[serde(default)]
    pub state: Option<OutboxState>,
    /// Most rows (default 100).
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: i64,
}

/// `GET /api/v1/outbox[?state=pending|delivered|dead]`: notifications, newest first; the
/// dead letters with `state=dead` (operators and above).
pub async fn outbox(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<OutboxQuery>,
) -> Result<Json<Vec<OutboxRow>>, ApiError> {
    caller.require(Role::Operator)?;
    if !(1..=10_000).contains(&query.limit) {
        return Err(ApiError::BadRequest("limit must be 1..=10000".into()));
    }
    Ok(Json(
        state.store.list_outbox(query.state, query.limit).await?,
    ))
}

impl From<crate::maintenance::MaintenanceError> for ApiError {
    fn from(error: crate::maintenance::MaintenanceError) -> Self {
        use crate::maintenance::MaintenanceError;
        match error {
            MaintenanceError::Invalid(reason) => ApiError::Unprocessable(reason),
            MaintenanceError::NotFound(id) => {
                ApiError::NotFound(format!("maintenance window {id:?}"))
            }
            MaintenanceError::Store(error) => error.into(),
        }
    }
}

/// `GET /api/v1/maintenance`: every maintenance window.
pub async fn list_maintenance(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::maintenance::Window>>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(crate::maintenance::list(&state).await?))
}

/// `POST /api/v1/maintenance`: adds a window (operators and above).
pub async fn create_maintenance(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(window): ApiJson<crate::maintenance::Window>,
) -> Result<Created<crate::maintenance::Window>, ApiError> {
    caller.require(Role::Operator)?;
    let window = crate::maintenance::create(&state, window).await?;
    Ok(Created(window))
}

/// `DELETE /api/v1/maintenance/{id}` (operators and above).
pub async fn delete_maintenance(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Operator)?;
    crate::maintenance::delete(&state, &id).await?;
    Ok(NoContent)
}

impl From<crate::rules::RuleError> for ApiError {
    fn from(error: crate::rules::RuleError) -> Self {
        use crate::rules::RuleError;
        match error {
            RuleError::Invalid(reason) => ApiError::Unprocessable(reason),
            RuleError::NotFound(id) => ApiError::NotFound(format!("rule {id:?}")),
            RuleError::Store(error) => error.into(),
        }
    }
}

/// `GET /api/v1/rules`: every host-metric rule.
pub async fn list_rules(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::rules::Rule>>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(crate::rules::list(&state.store).await?))
}

/// `POST /api/v1/rules`: adds a host-metric rule (operators and above).
pub async fn create_rule(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(rule): ApiJson<crate::rules::Rule>,
) -> Result<Created<crate::rules::Rule>, ApiError> {
    caller.require(Role::Operator)?;
    let rule = crate::rules::create(&state, rule).await?;
    Ok(Created(rule))
}

/// `DELETE /api/v1/rules/{id}`: deletes a rule and resolves its incidents.
pub async fn delete_rule(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Operator)?;
    crate::rules::delete(&state, &id).await?;
    Ok(NoContent)
}
