//! Time-series queries: results and host metrics by agent, check, region and time range.
//! Viewers read results' reasons with every URL in them scrubbed
//! ([`vantage_mqtt::redact::scrub_text`]): a probe can echo a URL that carries credentials.

use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ApiError, ApiPath, ApiQuery, Caller, IdPath};
use crate::AppState;
use crate::store::{
    CheckStatusRow, MAX_TIME_MS, MetricsRow, ResultRow, Role, SeriesFilter, now_ms,
};

/// Most rows one query returns.
pub const MAX_LIMIT: i64 = 10_000;

/// A time (or span) in a query: 0 to [`MAX_TIME_MS`].
fn time_ms(name: &str, value: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        Some(ms) if !(0..=MAX_TIME_MS).contains(&ms) => Err(ApiError::BadRequest(format!(
            "{name} must be 0..={MAX_TIME_MS} (ms since the epoch)"
        ))),
        _ => Ok(value),
    }
}

/// Query string of `/results` and `/metrics`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    pub agent: Option<String>,
    pub check: Option<String>,
    pub region: Option<String>,
    /// Start of the range, ms since the epoch (default: 24 h ago).
    #[schemars(range(min = 0, max = MAX_TIME_MS))]
    pub from_ms: Option<i64>,
    /// End of the range, ms since the epoch (default: now + 1 min).
    #[schemars(range(min = 0, max = MAX_TIME_MS))]
    pub to_ms: Option<i64>,
    /// Most rows (default 1000, at most 10000).
    #[schemars(range(min = 1, max = MAX_LIMIT))]
    pub limit: Option<i64>,
}

impl SeriesQuery {
    fn filter(self) -> Result<SeriesFilter, ApiError> {
        let now = now_ms();
        let filter = SeriesFilter {
            from_ms: time_ms("from_ms", self.from_ms)?.unwrap_or(now - 86_400_000),
            to_ms: time_ms("to_ms", self.to_ms)?.unwrap_or(now + 60_000),
            limit: self.limit.unwrap_or(1000),
            agent: self.agent,
            check: self.check,
            region: self.region,
        };
        if filter.from_ms > filter.to_ms {
            return Err(ApiError::BadRequest("from_ms is after to_ms".into()));
        }
        if !(1..=MAX_LIMIT).contains(&filter.limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1..={MAX_LIMIT}"
            )));
        }
        Ok(filter)
    }
}

/// `GET /api/v1/results`.
pub async fn results(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SeriesQuery>,
) -> Result<Json<Vec<ResultRow>>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut rows = state.store.query_results(&query.filter()?).await?;
    if caller.role < Role::Operator {
        for row in &mut rows {
            scrub(&mut row.reason);
        }
    }
    Ok(Json(rows))
}

/// Query string of `/metrics`: [`SeriesQuery`] without a check (metrics are the host's).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    pub agent: Option<String>,
    pub region: Option<String>,
    /// Start of the range, ms since the epoch (default: 24 h ago).
    #[schemars(range(min = 0, max = MAX_TIME_MS))]
    pub from_ms: Option<i64>,
    /// End of the range, ms since the epoch (default: now + 1 min).
    #[schemars(range(min = 0, max = MAX_TIME_MS))]
    pub to_ms: Option<i64>,
    /// Most rows (default 1000, at most 10000).
    #[schemars(range(min = 1, max = MAX_LIMIT))]
    pub limit: Option<i64>,
}

/// `GET /api/v1/metrics`.
pub async fn metrics(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<MetricsQuery>,
) -> Result<Json<Vec<MetricsRow>>, ApiError> {
    caller.require(Role::Viewer)?;
    let query = SeriesQuery {
        agent: query.agent,
        check: None,
        region: query.region,
        from_ms: query.from_ms,
        to_ms: query.to_ms,
        limit: query.limit,
    };
    Ok(Json(state.store.query_metrics(&query.filter()?).await?))
}

/// `GET /api/v1/status/checks`: the latest result per check and region.
pub async fn check_status(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<CheckStatusRow>>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut rows = state.store.list_check_status().await?;
    if caller.role < Role::Operator {
        for row in &mut rows {
            scrub(&mut row.reason);
        }
    }
    Ok(Json(rows))
}

fn scrub(reason: &mut String) {
    if let std::borrow::Cow::Owned(scrubbed) = vantage_mqtt::redact::scrub_text(reason) {
        *reason = scrubbed;
    }
}

/// Query string of `/uptime`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UptimeQuery {
    /// Comma-separated check ids (default: every check).
    pub checks: Option<String>,
    /// Comma-separated windows among 24h, 7d, 30d, 90d (default: all four).
    #[schemars(regex(pattern = r"^((24h|7d|30d|90d)(,(24h|7d|30d|90d))*)?$"))]
    pub window: Option<String>,
}

/// The items of a comma-separated list.
fn list(text: Option<String>) -> Option<Vec<String>> {
    text.map(|text| {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// `GET /api/v1/uptime`: uptime over 24 h, 7 d, 30 d and 90 d (or the named windows) of
/// every (or the named) check, overall and per region.
pub async fn uptime(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UptimeQuery>,
) -> Result<Json<Vec<crate::rollup::CheckUptime>>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(
        crate::rollup::uptime(
            &state.store,
            list(query.checks),
            list(query.window),
            now_ms(),
        )
        .await?,
    ))
}

/// `GET /api/v1/checks/{id}/uptime`.
pub async fn check_uptime(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<Json<crate::rollup::CheckUptime>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut all =
        crate::rollup::uptime(&state.store, Some(vec![id.clone()]), None, now_ms()).await?;
    all.pop()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("check {id:?}")))
}

/// Query string of `/checks/{id}/series` and `/agents/{id}/series`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSeriesQuery {
    /// Start of the range, ms since the epoch (default: 24 h before `to_ms`).
    #[schemars(range(min = 0, max = MAX_TIME_MS))]
    pub from_ms: Option<i64>,
    /// End of the range, ms since the epoch (default: now).
    #[schemars(range(min = 0, max = MAX_TIME_MS))]
    pub to_ms: Option<i64>,
    /// Width of a point in ms (default: the range in about 200 points; at least 1000).
    #[schemars(range(min = 1000, max = MAX_TIME_MS))]
    pub step_ms: Option<i64>,
}

impl CheckSeriesQuery {
    /// `(from_ms, to_ms)` with their defaults: the 24 h up to now.
    fn range(&self, now: i64) -> Result<(i64, i64), ApiError> {
        let to_ms = time_ms("to_ms", self.to_ms)?.unwrap_or(now);
        let from_ms = time_ms("from_ms", self.from_ms)?.unwrap_or(to_ms - 86_400_000);
        time_ms("step_ms", self.step_ms)?;
        Ok((from_ms, to_ms))
    }
}

/// `GET /api/v1/checks/{id}/series`: latency and failures per region in steps, from raw
/// rows, minute or hour rollups as the range demands.
pub async fn check_series(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
    ApiQuery(query): ApiQuery<CheckSeriesQuery>,
) -> Result<Json<crate::rollup::Series>, ApiError> {
    caller.require(Role::Viewer)?;
    let now = now_ms();
    let (from_ms, to_ms) = query.range(now)?;
    Ok(Json(
        crate::rollup::series(
            &state.store,
            &state.settings.retention(),
            &id,
            from_ms,
            to_ms,
            query.step_ms,
            now,
        )
        .await?,
    ))
}

/// `GET /api/v1/agents/{id}/series`: an agent's host metrics (CPU, memory, load, network,
/// fullest disk) in steps, min/avg/max per step, from raw samples, minute or hour rollups as
/// the range demands.
pub async fn agent_series(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
    ApiQuery(query): ApiQuery<CheckSeriesQuery>,
) -> Result<Json<crate::rollup::MetricSeries>, ApiError> {
    caller.require(Role::Viewer)?;
    let now = now_ms();
    let (from_ms, to_ms) = query.range(now)?;
    Ok(Json(
        crate::rollup::metric_series(
            &state.store,
            &state.settings.retention(),
            &id,
            from_ms,
            to_ms,
            query.step_ms,
            now,
        )
        .await?,
    ))
}

/// `GET /api/v1/overview`: every check's state and each region's flags and latest outcome in
/// one compact answer ([`crate::overview`]), what the dashboard's overview draws from.
pub async fn overview(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<crate::overview::Overview>, ApiError> {
    caller.require(Role::Viewer)?;
    let viewer = caller.role < Role::Operator;
    Ok(Json(
        crate::overview::build(&state.store, |reason| {
            if viewer {
                vantage_mqtt::redact::scrub_text(reason).into_owned()
            } else {
                reason.to_owned()
            }
        })
        .await?,
    ))
}
