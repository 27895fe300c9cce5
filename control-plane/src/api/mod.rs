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

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Refused(_) => (StatusCode::UNAUTHORIZED, "refused"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::CrossSite => (StatusCode::FORBIDDEN, "cross_site"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
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

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "store": state.store.backend(),
        "leader": state.lease.is_leader(),
    }))
}

async fn prometheus(State(state): State<AppState>) -> Response {
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
    let mut text = state.counters.render();
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
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /metrics/checks`: per-check series in the blackbox style ([`crate::exporter`]),
/// for a viewer's token (check names are the fleet's map).
async fn check_metrics(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
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
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/enroll", post(agents::enroll))
        .route("/agents", get(agents::list))
        .route("/agents/{id}", get(agents::get).delete(agents::revoke))
        .route("/regions", get(incidents::regions))
        .route("/verdicts", get(incidents::verdicts))
        .route("/checks/{id}/transitions", get(incidents::transitions))
        .route("/incidents", get(incidents::list))
        .route("/incidents/{id}", get(incidents::get))
        .route("/incidents/{id}/ack", post(incidents::acknowledge))
        .route("/incidents/{id}/notes", post(incidents::note))
        .route(
            "/channels",
            get(incidents::list_channels).post(incidents::create_channel),
        )
        .route(
            "/channels/{id}",
            axum::routing::put(incidents::put_channel).delete(incidents::delete_channel),
        )
        .route("/channels/{id}/test", post(incidents::test_channel))
        .route("/outbox", get(incidents::outbox))
        .route(
            "/maintenance",
            get(incidents::list_maintenance).post(incidents::create_maintenance),
        )
        .route(
            "/maintenance/{id}",
            axum::routing::delete(incidents::delete_maintenance),
        )
        .route(
            "/rules",
            get(incidents::list_rules).post(incidents::create_rule),
        )
        .route("/rules/{id}", axum::routing::delete(incidents::delete_rule))
        .route(
            "/enrollment-tokens",
            get(agents::list_tokens).post(agents::create_token),
        )
        .route(
            "/enrollment-tokens/{id}",
            axum::routing::delete(agents::delete_token),
        )
        .route(
            "/api-tokens",
            get(agents::list_api_tokens).post(agents::create_api_token),
        )
        .route(
            "/api-tokens/{id}",
            axum::routing::delete(agents::revoke_api_token),
        )
        .route("/checks", get(checks::list).post(checks::create))
        .route(
            "/checks/{id}",
            get(checks::get).put(checks::update).delete(checks::delete),
        )
        .route("/checks/{id}/run", post(run::run_check))
        .route("/checks/{id}/uptime", get(data::check_uptime))
        .route("/checks/{id}/series", get(data::check_series))
        .route("/agents/{id}/series", get(data::agent_series))
        .route("/uptime", get(data::uptime))
        .route("/probe", post(run::probe))
        .route("/results", get(data::results))
        .route("/metrics", get(data::metrics))
        .route("/status/checks", get(data::check_status))
        .route("/overview", get(data::overview))
        .route("/live", get(live::live))
        .route(
            "/sources",
            get(integrations::list_sources).post(integrations::create_source),
        )
        .route(
            "/sources/{id}",
            axum::routing::delete(integrations::delete_source),
        )
        .route("/integrations/zabbix", post(integrations::zabbix_webhook))
        .route("/integrations/{source}", post(integrations::source_webhook))
        .route("/events", get(integrations::list_events))
        .route("/events/{id}", get(integrations::get_event))
        .route("/external-nodes", get(integrations::external_nodes))
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .route("/", get(ui::index))
        .route(
            "/ui/session",
            get(ui::whoami).post(ui::sign_in).delete(ui::sign_out),
        )
        .route("/ui/{*path}", get(ui::file))
        .route("/status/{page}", get(status::html))
        .route("/status/{page}/data", get(status::data))
        .route("/status/{page}/badge/{file}", get(status::badge))
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .route("/metrics/checks", get(check_metrics))
        .route("/dist/{file}", get(dist::file))
        .nest("/api/v1", api)
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
}
