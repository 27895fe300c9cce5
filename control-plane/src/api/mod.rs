//! The HTTP API under `/api/v1`, plus `/healthz` and `/metrics`, served over HTTPS.
//!
//! Every route but enrollment, health, metrics and the OpenAPI document needs a bearer API
//! token (stored hashed); roles are ordered viewer < operator < admin and each route names the
//! least role it needs. Errors are JSON `{"error": {"code", "message"}}` with the status that
//! fits: invalid input is a 4xx and changes nothing, an unexpected failure is an opaque 500
//! whose cause is logged. Every client address is rate limited.
//!
//! Files: [`agents`] (agents, enrollment, tokens), [`checks`], [`data`] (results,
//! metrics, status), [`incidents`] (regions, verdicts, incidents, channels, outbox), [`live`] (WebSocket and SSE), [`openapi`], [`server`] (TLS serving),
//! [`dist`] (release artifacts under `/dist`, no token), [`ui`] (the dashboard and its
//! sessions), [`status`] (public status pages and badges, no token), [`integrations`]
//! (sources, their webhooks, which take a source's secret instead of a token, and events).

pub mod agents;
pub mod checks;
pub mod data;
pub mod dist;
pub mod incidents;
pub mod integrations;
pub mod live;
pub mod openapi;
pub mod run;
pub mod server;
pub mod status;
pub mod ui;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aide::axum::ApiRouter;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;

use crate::AppState;
use crate::store::{Role, StoreError};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Refused(String),
    #[error("this route needs the {0} role")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("too many requests")]
    TooManyRequests,
    /// A body over the route's limit.
    #[error("{0}")]
    TooLarge(String),
    /// A request signed in by the dashboard's cookie that did not come from this origin.
    #[error("cross-site request refused: it must come from this origin")]
    CrossSite,
    /// Something we called on the caller's behalf (a notification receiver) failed.
    #[error("{0}")]
    BadGateway(String),
    /// The work was handed to a task that stopped (the process is stopping): try again.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { what, id } => {
                ApiError::Conflict(format!("{what} {id:?} already exists"))
            }
            StoreError::Interrupted(why) => ApiError::Unavailable(format!("{why}; try again")),
            error @ (StoreError::Database(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt { .. }) => ApiError::Internal(error.into()),
        }
    }
}

impl From<crate::checks::CheckError> for ApiError {
    fn from(error: crate::checks::CheckError) -> Self {
        use crate::checks::CheckError;
        match error {
            CheckError::Invalid(reason) => ApiError::Unprocessable(reason),
            CheckError::NotFound(id) => ApiError::NotFound(format!("check {id:?}")),
            error @ CheckError::Oversize(_) => ApiError::Unprocessable(error.to_string()),
            error @ CheckError::Corrupt { .. } => ApiError::Internal(error.into()),
            CheckError::Store(error) => error.into(),
        }
    }
}

impl From<crate::enrollment::EnrollError> for ApiError {
    fn from(error: crate::enrollment::EnrollError) -> Self {
        use crate::enrollment::EnrollError;
        match error {
            EnrollError::Invalid(reason) => ApiError::Unprocessable(reason),
            EnrollError::Refused(refusal) => ApiError::Refused(refusal.to_string()),
            EnrollError::NotFound(what) => ApiError::NotFound(what),
            EnrollError::Store(error) => error.into(),
        }
    }
}

impl From<crate::runnow::RunError> for ApiError {
    fn from(error: crate::runnow::RunError) -> Self {
        use crate::runnow::RunError;
        match error {
            RunError::Invalid(reason) => ApiError::Unprocessable(reason),
            RunError::TooManyWaiting => ApiError::TooManyRequests,
            RunError::Store(error) => error.into(),
            RunError::Publish(error) => ApiError::Internal(error.into()),
        }
    }
}

impl From<crate::rollup::RollupError> for ApiError {
    fn from(error: crate::rollup::RollupError) -> Self {
        use crate::rollup::RollupError;
        match error {
            RollupError::Invalid(reason) => ApiError::BadRequest(reason),
            RollupError::NotFound(id) => ApiError::NotFound(format!("check {id:?}")),
            RollupError::AgentNotFound(id) => ApiError::NotFound(format!("agent {id:?}")),
            RollupError::Store(error) => error.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::Unprocessable(e.body_text()),
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use openapi::ErrorCode;
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Refused(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Refused),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Invalid),
            ApiError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            ApiError::CrossSite => (StatusCode::FORBIDDEN, ErrorCode::CrossSite),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, ErrorCode::UpstreamFailed),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        };
        let body = openapi::ErrorBody {
            error: openapi::ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// A query string whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path parameters whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The `{id}` of a route's path.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct IdPath {
    pub id: String,
}

/// The caller, authenticated by a bearer token (or `?token=` for browsers' live feeds).
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    /// The API token's id (not its secret): long-lived answers close when it is revoked.
    pub token_id: String,
}

impl Caller {
    /// Refuses callers below `role`.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`].
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(role.as_str()))
        }
    }
}

fn token_from_parts(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        return text.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    // Browsers cannot set headers on WebSocket or EventSource requests: the live feed alone
    // also takes `?token=`. Everywhere else a token in a URL would end up in proxy logs.
    if !parts.uri.path().ends_with("/live") {
        return None;
    }
    parts.uri.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token=").map(str::to_owned))
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = token_from_parts(parts) else {
            // The dashboard's session cookie, from this origin only.
            let secret = ui::session_cookie(&parts.headers).ok_or(ApiError::Unauthorized)?;
            if !ui::same_origin(parts) {
                return Err(ApiError::CrossSite);
            }
            let found = state
                .store
                .session(&secret)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            return Ok(Caller {
                role: found.role,
                token_id: found.id,
            });
        };
        if token.is_empty() || token.len() > 200 {
            return Err(ApiError::Unauthorized);
        }
        let found = state
            .store
            .api_token(&token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(Caller {
            role: found.role,
            token_id: found.id,
        })
    }
}

/// A token bucket per client address.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    per_second: f64,
    burst: f64,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
            per_second,
            burst,
        }
    }

    /// Takes one token for `ip`; false when its bucket is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs() < 60);
        }
        let (tokens, last) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the rate-limit layer holds: the buckets (the API's and the webhooks') and the counter
/// of refusals.
#[derive(Clone)]
struct RateLimit {
    limiter: Arc<RateLimiter>,
    webhooks: Arc<RateLimiter>,
    counters: Arc<crate::counters::Counters>,
}

async fn rate_limit(State(limit): State<RateLimit>, request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let limiter = if request.uri().path().starts_with("/api/v1/integrations/") {
        &limit.webhooks
    } else {
        &limit.limiter
    };
    if let Some(ip) = ip
        && !limiter.allow(ip)
    {
        limit
            .counters
            .api_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        return ApiError::TooManyRequests.into_response();
    }
    next.run(request).await
}

/// `GET /healthz`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: Liveness,
    pub store: Backend,
    /// Whether this replica holds the scheduling lease.
    pub leader: bool,
}

/// That the process answers.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Ok,
}

/// Which store a replica runs on.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: Liveness::Ok,
        store: match &state.store {
            crate::store::Store::Sqlite(_) => Backend::Sqlite,
            crate::store::Store::Postgres(_) => Backend::Postgres,
        },
        leader: state.lease.is_leader(),
    })
}

async fn prometheus(State(state): State<AppState>) -> openapi::Exposition {
    state
        .counters
        .gauges
        .run_now_pending
        .store(state.pending.len() as u64, Ordering::Relaxed);
    // Counted by the hub, which holds no counters.
    state
        .counters
        .live_relay_backlog
        .store(state.hub.relay_dropped(), Ordering::Relaxed);
    // Counted by the embedded broker's router, which holds no counters of ours.
    state
        .counters
        .broker_log_skipped
        .store(rumqttd::skipped_messages(), Ordering::Relaxed);
    let mut text = state.counters.render();
    let [agents, checks, regions, texts, text_bytes] = state.keys.sizes();
    text.push_str(&format!(
        "# HELP vantage_ingest_key_cache_entries Integer keys of names and texts ingest remembers, by map.\n# TYPE vantage_ingest_key_cache_entries gauge\n\
         vantage_ingest_key_cache_entries{{map=\"agents\"}} {agents}\nvantage_ingest_key_cache_entries{{map=\"checks\"}} {checks}\n\
         vantage_ingest_key_cache_entries{{map=\"regions\"}} {regions}\nvantage_ingest_key_cache_entries{{map=\"texts\"}} {texts}\n\
         # HELP vantage_ingest_key_cache_text_bytes Bytes of the texts ingest remembers the keys of.\n# TYPE vantage_ingest_key_cache_text_bytes gauge\n\
         vantage_ingest_key_cache_text_bytes {text_bytes}\n"
    ));
    text.push_str(&format!(
        "# HELP vantage_live_subscribers Live feed clients connected.\n# TYPE vantage_live_subscribers gauge\nvantage_live_subscribers {}\n",
        state.hub.n_subscribers()
    ));
    text.push_str(&format!(
        "# HELP vantage_store_rows_corrupt_total Stored rows left out of listings because they do not decode, by table.\n# TYPE vantage_store_rows_corrupt_total counter\nvantage_store_rows_corrupt_total{{table=\"checks\"}} {}\nvantage_store_rows_corrupt_total{{table=\"rollups\"}} {}\n",
        crate::store::CORRUPT_CHECK_ROWS.load(Ordering::Relaxed),
        crate::store::rollups::CORRUPT_SKETCHES.load(Ordering::Relaxed)
    ));
    text.push_str(&state.source_counters.render());
    match state.store.soonest_cert_expiry_ms().await {
        Ok(soonest_ms) => text.push_str(&crate::counters::render_cert_expiry(
            soonest_ms,
            crate::store::now_ms(),
        )),
        Err(error) => tracing::warn!(%error, "Cannot read the soonest agent certificate expiry"),
    }
    openapi::Exposition(text)
}

/// `GET /metrics/checks`: per-check series in the blackbox style ([`crate::exporter`]),
/// for a viewer's token (check names are the fleet's map).
async fn check_metrics(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<openapi::Exposition, ApiError> {
    caller.require(Role::Viewer)?;
    let checks = crate::checks::list(&state).await?;
    let ids: std::collections::HashSet<&str> =
        checks.iter().filter_map(|c| c.id.as_deref()).collect();
    let statuses: Vec<crate::exporter::Status> = state
        .store
        .list_check_status()
        .await?
        .into_iter()
        .filter(|s| ids.contains(s.check_id.as_str()))
        .map(|s| crate::exporter::Status {
            check_id: s.check_id,
            region: s.region,
            ok: s.ok,
            total_ms: s.total_ms,
            measured_at_ms: s.measured_at_ms,
        })
        .collect();
    let verdicts = state
        .store
        .list_verdicts()
        .await?
        .into_iter()
        .filter(|v| ids.contains(v.check_id.as_str()))
        .map(|v| (v.check_id, v.state))
        .collect();
    let text = crate::exporter::render(
        env!("CARGO_PKG_VERSION"),
        &statuses,
        &state.latest.snapshot(&ids),
        &verdicts,
    );
    Ok(openapi::Exposition(text))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}

/// Every documented route, with its summary and the least role it needs; the OpenAPI
/// document is generated from this router ([`openapi`]).
fn documented() -> ApiRouter<AppState> {
    use aide::axum::routing::{delete_with, get_with, post_with, put_with};
    use openapi::{admin, answers, json_body, operator, public, viewer};
    let api = ApiRouter::new()
        .api_route("/enroll", post_with(agents::enroll, public("Enroll an agent: token + CSR → id, certificate, CA, broker address")))
        .api_route("/agents", get_with(agents::list, viewer("List agents (?region=)")))
        .api_route(
            "/agents/{id}",
            get_with(agents::get, viewer("One agent")).delete_with(
                agents::revoke,
                operator("Revoke an agent: disconnect it and refuse its certificate"),
            ),
        )
        .api_route("/regions", get_with(incidents::regions, viewer("Regions: agents, online count, assigned checks, checks on the fallback, status (ok, degraded: fallback, degraded: fallback (agents full), empty)")))
        .api_route("/verdicts", get_with(incidents::verdicts, viewer("Every check's verdict (up, degraded, down, maintenance, paused, pending) with its reason and per-region evidence")))
        .api_route("/checks/{id}/transitions", get_with(incidents::transitions, viewer("A check's state changes with their evidence, newest first")))
        .api_route("/incidents", get_with(incidents::list, viewer("Incidents, newest first (?open=true, limit)")))
        .api_route("/incidents/{id}", get_with(incidents::get, viewer("An incident and its timeline")))
        .api_route("/incidents/{id}/ack", post_with(incidents::acknowledge, operator("Acknowledge an incident (stops reminders)")))
        .api_route("/incidents/{id}/notes", post_with(incidents::note, operator("Add a note {text} to an incident's timeline")))
        .api_route(
            "/channels",
            get_with(incidents::list_channels, operator("Notification channels, without secrets"))
                .post_with(incidents::create_channel, admin("Create a channel {id?, name, config: webhook|slack|ntfy|email, enabled, reminder_s, max_per_hour}")),
        )
        .api_route(
            "/channels/{id}",
            put_with(incidents::put_channel, admin("Replace a channel"))
                .delete_with(incidents::delete_channel, admin("Delete a channel")),
        )
        .api_route("/channels/{id}/test", post_with(incidents::test_channel, operator("Send a test notification now; 502 when the receiver refuses or cannot be reached")))
        .api_route("/outbox", get_with(incidents::outbox, operator("Notifications (?state=pending|delivered|dead, limit): attempts, last error; dead letters are kept")))
        .api_route(
            "/maintenance",
            get_with(incidents::list_maintenance, viewer("Maintenance windows"))
                .post_with(incidents::create_maintenance, operator("Add a window {name, schedule: once|weekly, scope: checks, check_labels, regions, agent_labels}")),
        )
        .api_route("/maintenance/{id}", delete_with(incidents::delete_maintenance, operator("Delete a window")))
        .api_route(
            "/rules",
            get_with(incidents::list_rules, viewer("Host-metric rules"))
                .post_with(incidents::create_rule, operator("Add a rule {name, selector, condition: threshold|disk_full}")),
        )
        .api_route("/rules/{id}", delete_with(incidents::delete_rule, operator("Delete a rule (its incidents are resolved)")))
        .api_route(
            "/enrollment-tokens",
            get_with(agents::list_tokens, operator("List enrollment tokens (no secrets)"))
                .post_with(agents::create_token, operator("Create an enrollment token {region, labels, uses, ttl_s}; the answer holds its secret, once, and ways to install an agent with it")),
        )
        .api_route("/enrollment-tokens/{id}", delete_with(agents::delete_token, operator("Delete an enrollment token")))
        .api_route(
            "/api-tokens",
            get_with(agents::list_api_tokens, admin("List API tokens: id, name, role, created_at_ms, revoked_at_ms (never a secret)"))
                .post_with(agents::create_api_token, admin("Create an API token {role, name}; the answer holds its secret, once")),
        )
        .api_route("/api-tokens/{id}", delete_with(agents::revoke_api_token, admin("Revoke an API token: refused from the next request or MQTT login on")))
        .api_route(
            "/checks",
            get_with(checks::list, viewer("List checks (viewers get header values, bodies, send steps, URL credentials, query values and chain RPC paths as \"<redacted>\")"))
                .post_with(checks::create, operator("Create a check")),
        )
        .api_route(
            "/checks/{id}",
            get_with(checks::get, viewer("One check (redacted for viewers, as in the list)"))
                .put_with(checks::update, operator("Replace a check"))
                .delete_with(checks::delete, operator("Delete a check")),
        )
        .api_route("/checks/{id}/run", post_with(run::run_check, |op| openapi::optional_json_body::<run::RunRequest>(operator("Run a check now in its regions (or {regions}, each named once); one result or error per region; the body is optional")(op))))
        .api_route("/checks/{id}/uptime", get_with(data::check_uptime, viewer("One check's uptime over 24h, 7d, 30d and 90d")))
        .api_route("/checks/{id}/series", get_with(data::check_series, viewer("A check's latency (min/avg/max, p50/p95/p99) and failures per region in steps, from raw rows, minute or hour rollups")))
        .api_route("/agents/{id}/series", get_with(data::agent_series, viewer("An agent's host metrics as min/avg/max per step, from raw samples, minute or hour rollups")))
        .api_route("/uptime", get_with(data::uptime, viewer("Uptime over 24h, 7d, 30d and 90d (or ?window=30d,…) of every check or of ?checks=a,b, overall and per region, from hourly and daily rollups")))
        .api_route("/probe", post_with(run::probe, operator("Run an ad-hoc check {kind, timeout_ms, regions} now (each region named once); nothing is stored")))
        .api_route("/results", get_with(data::results, viewer("Results (?agent, check, region, from_ms, to_ms, limit); for viewers URLs in reasons lose credentials and query values")))
        .api_route("/metrics", get_with(data::metrics, viewer("Host metrics (?agent, region, from_ms, to_ms, limit)")))
        .api_route("/status/checks", get_with(data::check_status, viewer("Latest result per check and region")))
        .api_route("/overview", get_with(data::overview, viewer("Every check's state and each region's flags and latest outcome, compact")))
        .api_route("/live", get_with(live::live, |op| {
            let op = viewer("Live feed: WebSocket on upgrade, else server-sent events (?region, agent, check, kind, source, token, latest)")(op);
            let op = answers(op, 200, "text/event-stream", "Server-sent events");
            answers(op, 101, "", "Switching Protocols (WebSocket)")
        }))
        .api_route(
            "/sources",
            get_with(integrations::list_sources, viewer("Integration sources (never a secret)"))
                .post_with(integrations::create_source, admin("Create a source {id, kind: zabbix|helius|alchemy|hmac, secret?, incident_severity?}; the answer holds its secret, shown once")),
        )
        .api_route("/sources/{id}", delete_with(integrations::delete_source, admin("Delete a source (its events stay)")))
        .api_route("/integrations/zabbix", post_with(integrations::zabbix_webhook, |op| json_body(public("Zabbix webhook media type (provision/zabbix/): Authorization: Bearer <a Zabbix source's secret>")(op))))
        .api_route("/integrations/{source}", post_with(integrations::source_webhook, |op| json_body(public("A source's webhook: Zabbix (bearer or X-Vantage-Signature), Helius (its Authorization header), Alchemy (X-Alchemy-Signature), hmac (X-Vantage-Signature: sha256=<hex>); answers per-row outcomes")(op))))
        .api_route("/events", get_with(integrations::list_events, viewer("Events from sources, newest first (?source, status, before, limit)")))
        .api_route("/events/{id}", get_with(integrations::get_event, viewer("One event with the sender's payload (bounded)")))
        .api_route("/external-nodes", get_with(integrations::external_nodes, viewer("Hosts sources named that map to no agent")));
    ApiRouter::new()
        .api_route(
            "/ui/session",
            get_with(ui::whoami, |op| {
                public("The dashboard session's role, or null when nobody is signed in")(op)
                    .with(openapi::optional_auth)
            })
                .post_with(ui::sign_in, |op| {
                    let op = public("Sign the dashboard in: an API token in, a session cookie out")(op);
                    op.response::<200, Json<ui::Session>>()
                })
                .delete_with(ui::sign_out, |op| answers(viewer("Sign the dashboard out")(op), 204, "", "Signed out; the cookie is cleared")),
        )
        .api_route("/status/{page}", get_with(status::html, |op| answers(public("A public status page")(op), 200, "text/html", "The page")))
        .api_route("/status/{page}/data", get_with(status::data, public("What a public status page shows")))
        .api_route("/status/{page}/badge/{file}", get_with(status::badge, |op| answers(public("A check's state as an SVG badge, if the check is on the page")(op), 200, "image/svg+xml", "The badge")))
        .api_route("/healthz", get_with(healthz, public("Liveness, store backend, and whether this replica leads")))
        .api_route("/metrics", get_with(prometheus, public("Prometheus counters")))
        .api_route("/metrics/checks", get_with(check_metrics, viewer("Per-check series in the blackbox_exporter style")))
        .api_route("/dist/{file}", get_with(dist::file, |op| answers(public("A signed release artifact (install.sh, SHA256SUMS, agent tarballs, edge images)")(op), 200, "application/octet-stream", "The file")))
        .nest("/api/v1", api)
}

/// The router of [`documented`] and its OpenAPI document (which describes its own route,
/// `GET /api/v1/openapi.json`, too).
fn documented_with_document() -> (Router<AppState>, aide::openapi::OpenApi) {
    let mut doc = openapi::base();
    let routes = documented();
    let router = routes.finish_api_with(&mut doc, openapi::finish);
    let mut op = aide::openapi::Operation::default();
    let _ = openapi::public("This document")(aide::transform::TransformOperation::new(&mut op))
        .response_with::<200, Json<serde_json::Value>, _>(|r| {
            r.description("The OpenAPI 3.1 document")
        });
    doc.paths.get_or_insert_with(Default::default).paths.insert(
        "/api/v1/openapi.json".into(),
        aide::openapi::ReferenceOr::Item(aide::openapi::PathItem {
            get: Some(op),
            ..Default::default()
        }),
    );
    (router, doc)
}

/// The OpenAPI document of [`documented`] (`GET /api/v1/openapi.json`).
pub fn openapi_document() -> aide::openapi::OpenApi {
    documented_with_document().1
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (documented, doc) = documented_with_document();
    let document: Bytes = serde_json::to_vec(&doc)
        .expect("an OpenAPI document serializes")
        .into();
    documented
        // The dashboard's own files are not API: left out of the document.
        .route("/", get(ui::index))
        .route("/ui/{*path}", get(ui::file))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document,
                    )
                }
            }),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            RateLimit {
                limiter: Arc::new(RateLimiter::new(
                    state.settings.api_rate_per_s,
                    state.settings.api_rate_burst,
                )),
                webhooks: Arc::new(RateLimiter::new(
                    state.settings.webhook_rate_per_s,
                    state.settings.webhook_rate_burst,
                )),
                counters: state.counters.clone(),
            },
            rate_limit,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_refuses_past_the_burst_and_refills() {
        // 20 tokens a second: a token comes back 50 ms after it was spent, far longer than
        // the four calls below take even on a loaded machine (at 1,000 a second, one
        // descheduling of the test thread for a millisecond refilled the bucket in time).
        let limiter = RateLimiter::new(20.0, 3.0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(limiter.allow(ip) && limiter.allow(ip) && limiter.allow(ip));
        assert!(!limiter.allow(ip));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(limiter.allow(ip));
        assert!(limiter.allow("10.0.0.1".parse().unwrap()));
    }

    /// The document names every route of the router that the API serves, each path
    /// parameter, and generates without an error.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = errors.clone();
        aide::generate::on_error(move |error| seen.borrow_mut().push(error.to_string()));
        let doc = serde_json::to_value(openapi_document()).unwrap();
        assert_eq!(errors.borrow().as_slice(), &[] as &[String]);
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no answer"
                );
                // Every `{name}` of the path is a declared path parameter.
                for name in path.split('{').skip(1).filter_map(|p| p.split('}').next()) {
                    let declared = op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["in"] == "path" && p["name"] == name && p["required"] == true
                        })
                    });
                    assert!(declared, "{method} {path} does not declare {{{name}}}");
                }
            }
        }
        // Every route's methods but the dashboard's own files (`/`, `/ui/{*path}`): a new
        // route counts here.
        assert_eq!(operations, 64, "{:?}", paths.keys().collect::<Vec<_>>());
        let create = &doc["paths"]["/api/v1/checks"]["post"];
        assert_eq!(create["x-vantage-role"], "operator");
        assert_eq!(create["security"][0]["bearer"], serde_json::json!([]));
        assert!(create["requestBody"]["content"]["application/json"]["schema"].is_object());
        assert!(create["responses"]["201"].is_object());
        assert!(doc["paths"]["/api/v1/agents/{id}"]["delete"]["responses"]["204"].is_object());
        assert!(doc["components"]["schemas"]["CheckDefinition"].is_object());
        // JSON Schema 2020-12, 3.1's dialect: a tuple is `prefixItems`, never draft 7's
        // `items: [..]`, which 3.1 validators refuse (the overview's rows are tuples).
        fn draft7_tuples(value: &serde_json::Value, at: &str, found: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if map.get("items").is_some_and(serde_json::Value::is_array) {
                        found.push(at.to_owned());
                    }
                    for (key, child) in map {
                        draft7_tuples(child, &format!("{at}/{key}"), found);
                    }
                }
                serde_json::Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        draft7_tuples(child, &format!("{at}/{i}"), found);
                    }
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        draft7_tuples(&doc, "", &mut found);
        assert_eq!(found, Vec::<String>::new());
        let checks = &doc["components"]["schemas"]["Overview"]["properties"]["checks"];
        assert!(checks["items"]["prefixItems"].is_array(), "{checks}");
    }
}
