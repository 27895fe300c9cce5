//! Run-now routes: `POST /api/v1/checks/{id}/run` and the ad-hoc `POST /api/v1/probe`.
//!
//! They check the caller and the body, find the check, and hand it to
//! [`crate::runnow::dispatch`]; its errors map to statuses in `From<RunError> for ApiError`.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;
use vantage_mqtt::{CheckKind, CheckSpec};

use super::{ApiError, ApiJson, ApiPath, Caller, IdPath};
use crate::AppState;
use crate::runnow::{RunResponse, dispatch};
use crate::store::Role;

/// Body of `POST /api/v1/checks/{id}/run` (all optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Regions to run in (default: the check's regions).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// How long to wait for each region, in milliseconds (default: the check's timeout
    /// plus 5 s).
    #[serde(default)]
    pub wait_ms: Option<u32>,
}

/// Body of `POST /api/v1/probe`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    pub kind: CheckKind,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    pub regions: Vec<String>,
    #[serde(default)]
    pub wait_ms: Option<u32>,
}

fn default_timeout_ms() -> u32 {
    10_000
}

/// `POST /api/v1/checks/{id}/run`.
pub async fn run_check(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
    body: axum::body::Bytes,
) -> Result<Json<RunResponse>, ApiError> {
    caller.require(Role::Operator)?;
    // The body is optional: empty means the check's own regions and timeout.
    let request: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
            _ => ApiError::BadRequest(format!("body is not valid JSON: {e}")),
        })?
    };
    let row = state
        .store
        .get_check(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("check {id:?}")))?;
    let spec = row.spec();
    let regions = request.regions.unwrap_or_else(|| {
        let mut seen = HashSet::new();
        let mut regions = row.regions.clone();
        regions.retain(|region| seen.insert(region.clone()));
        regions
    });
    Ok(Json(
        dispatch(&state, spec, regions, request.wait_ms).await?,
    ))
}

/// `POST /api/v1/probe`: an ad-hoc check, validated like a stored one, never stored.
pub async fn probe(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ProbeRequest>,
) -> Result<Json<RunResponse>, ApiError> {
    caller.require(Role::Operator)?;
    let body = crate::checks::CheckDefinition {
        id: None,
        name: "ad-hoc probe".into(),
        kind: request.kind,
        interval_s: 86_400,
        timeout_ms: request.timeout_ms,
        regions: request.regions,
        quorum: None,
        retries: 1,
        recovery: 1,
        agents_per_region: 1,
        depends_on: Vec::new(),
        labels: Default::default(),
        anomaly_z: 0.0,
        enabled: true,
    };
    crate::checks::validate(&body)?;
    let spec = CheckSpec {
        id: "adhoc".into(),
        interval_s: body.interval_s,
        timeout_ms: body.timeout_ms,
        kind: body.kind,
    };
    Ok(Json(
        dispatch(&state, spec, body.regions, request.wait_ms).await?,
    ))
}
