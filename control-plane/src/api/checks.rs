//! Check definitions: create, read, update, delete, with validation at creation time.
//!
//! Viewers read checks with every field that can hold a secret redacted
//! ([`CheckKind::redacted`]); operators and admins, who write checks, read them whole.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use vantage_mqtt::{CheckKind, redact, topic};
#[cfg(test)]
use vantage_mqtt::{HttpCheck, TcpCheck};

use super::{ApiError, ApiJson, Caller};
use crate::AppState;
use crate::assign::check_regions;
use crate::store::{CheckRow, Role, now_ms, random_id};

/// A check as the API takes and shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// Optional on create (generated when absent); ignored on update.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// What to probe: `{"type": "http", "url": …}` or `{"type": "tcp", "host": …, "port": …}`.
    pub kind: CheckKind,
    #[serde(default = "default_interval_s")]
    pub interval_s: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    pub regions: Vec<String>,
    /// Regions that must fail for the check to be DOWN.
    #[serde(default = "default_quorum")]
    pub quorum: u32,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_interval_s() -> u32 {
    60
}
fn default_timeout_ms() -> u32 {
    10_000
}
fn default_quorum() -> u32 {
    1
}
fn default_enabled() -> bool {
    true
}

/// Checks every field of a check body.
///
/// # Errors
/// [`ApiError::Unprocessable`] naming the first invalid field.
pub fn validate(body: &CheckBody) -> Result<(), ApiError> {
    let invalid = |message: String| Err(ApiError::Unprocessable(message));
    if let Some(id) = &body.id
        && !topic::valid_id(id)
    {
        return invalid("id must be 1-64 of a-z 0-9 - _ .".into());
    }
    if body.name.trim().is_empty()
        || body.name.len() > 255
        || body.name.chars().any(char::is_control)
    {
        return invalid("name must be 1-255 printable characters".into());
    }
    if !(1..=86_400).contains(&body.interval_s) {
        return invalid("interval_s must be 1..=86400".into());
    }
    if !(100..=120_000).contains(&body.timeout_ms) {
        return invalid("timeout_ms must be 100..=120000".into());
    }
    if u64::from(body.timeout_ms) > u64::from(body.interval_s) * 1000 {
        return invalid("timeout_ms must not exceed the interval".into());
    }
    if body.regions.is_empty() || body.regions.len() > 64 {
        return invalid("regions must name 1 to 64 regions".into());
    }
    if let Some(bad) = body.regions.iter().find(|r| !topic::valid_id(r)) {
        return invalid(format!("region {bad:?} is not a valid region id"));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = body.regions.iter().find(|r| !seen.insert(r.as_str())) {
        return invalid(format!("region {twice:?} is named twice"));
    }
    if body.quorum == 0 || body.quorum as usize > body.regions.len() {
        return invalid("quorum must be between 1 and the number of regions".into());
    }
    // Before the probe's own checks, which would refuse a redacted URL less clearly.
    if serde_json::to_string(&body.kind).is_ok_and(|text| text.contains(redact::MARK)) {
        return invalid(format!(
            "kind holds the redaction mark {:?} (a viewer's copy of a check?): send the real values",
            redact::MARK
        ));
    }
    vantage_agent::probe::validate(&body.kind).map_err(ApiError::Unprocessable)?;
    Ok(())
}

/// A check as `caller` may read it: whole for operators and admins, secrets redacted below.
fn shown_to(caller: &Caller, mut body: CheckBody) -> CheckBody {
    if caller.role < Role::Operator {
        body.kind = body.kind.redacted();
    }
    body
}

fn to_row(id: String, body: &CheckBody, created_at_ms: i64) -> CheckRow {
    CheckRow {
        id,
        name: body.name.clone(),
        kind: body.kind.type_name().to_owned(),
        spec: serde_json::to_string(&body.kind).unwrap_or_default(),
        interval_s: i64::from(body.interval_s),
        timeout_ms: i64::from(body.timeout_ms),
        regions: serde_json::to_string(&body.regions).unwrap_or_else(|_| "[]".into()),
        quorum: i64::from(body.quorum),
        enabled: body.enabled,
        created_at_ms,
        updated_at_ms: now_ms(),
    }
}

/// A stored check in the API's shape.
pub fn to_body(row: &CheckRow) -> Result<CheckBody, ApiError> {
    let kind = serde_json::from_str(&row.spec).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("stored check {} is corrupt: {e}", row.id))
    })?;
    Ok(CheckBody {
        id: Some(row.id.clone()),
        name: row.name.clone(),
        kind,
        interval_s: u32::try_from(row.interval_s).unwrap_or(u32::MAX),
        timeout_ms: u32::try_from(row.timeout_ms).unwrap_or(u32::MAX),
        regions: check_regions(row),
        quorum: u32::try_from(row.quorum).unwrap_or(1),
        enabled: row.enabled,
    })
}

/// Refuses a check that would push the desired config of any of its regions over
/// [`vantage_mqtt::MAX_CONFIG_BYTES`]: every agent of a region receives all of its checks, and
/// an agent refuses a config over the limit.
fn refuse_oversize(over: Option<(String, usize, usize)>) -> Result<(), ApiError> {
    match over {
        None => Ok(()),
        Some((region, size, n)) => Err(ApiError::Unprocessable(format!(
            "region {region:?} would hand each of its agents {n} checks in a {size}-byte config, over the {} bytes an agent accepts; spread the checks over more regions",
            vantage_mqtt::MAX_CONFIG_BYTES
        ))),
    }
}

/// Makes sure the check's regions exist and wakes the assignment worker, which publishes the
/// changed configs within about 50 ms (changes arriving together share one run).
async fn after_change(state: &AppState, body: &CheckBody) -> Result<(), ApiError> {
    for region in &body.regions {
        state.store.ensure_region(region).await?;
    }
    state.reassign.notify_one();
    Ok(())
}

/// `POST /api/v1/checks`.
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<(StatusCode, Json<CheckBody>), ApiError> {
    caller.require(Role::Operator)?;
    validate(&body)?;
    let id = body.id.clone().unwrap_or_else(|| random_id("ck-", 6));
    let row = to_row(id, &body, now_ms());
    {
        let mut budget = state.config_budget.lock().await;
        refuse_oversize(budget.over_limit(&state.store, &row).await?)?;
        state.store.insert_check(&row).await?;
        budget.apply(&row);
    }
    after_change(&state, &body).await?;
    Ok((StatusCode::CREATED, Json(to_body(&row)?)))
}

/// `GET /api/v1/checks`.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<CheckBody>>, ApiError> {
    caller.require(Role::Viewer)?;
    let rows = state.store.list_checks().await?;
    Ok(Json(
        rows.iter()
            .map(|row| to_body(row).map(|body| shown_to(&caller, body)))
            .collect::<Result<_, _>>()?,
    ))
}

/// `GET /api/v1/checks/{id}`.
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CheckBody>, ApiError> {
    caller.require(Role::Viewer)?;
    let row = state
        .store
        .get_check(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("check {id:?}")))?;
    Ok(Json(shown_to(&caller, to_body(&row)?)))
}

/// `PUT /api/v1/checks/{id}`: replaces the definition.
pub async fn update(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<CheckBody>, ApiError> {
    caller.require(Role::Operator)?;
    validate(&body)?;
    if body.id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiError::Unprocessable(
            "the body's id differs from the path's".into(),
        ));
    }
    let existing = state
        .store
        .get_check(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("check {id:?}")))?;
    let row = to_row(id, &body, existing.created_at_ms);
    {
        let mut budget = state.config_budget.lock().await;
        refuse_oversize(budget.over_limit(&state.store, &row).await?)?;
        state.store.update_check(&row).await?;
        budget.apply(&row);
    }
    after_change(&state, &body).await?;
    Ok(Json(to_body(&row)?))
}

/// `DELETE /api/v1/checks/{id}`.
pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    {
        let mut budget = state.config_budget.lock().await;
        if !state.store.delete_check(&id).await? {
            return Err(ApiError::NotFound(format!("check {id:?}")));
        }
        budget.remove(&id);
    }
    // Its retained status topics go too.
    for status in state.store.list_check_status().await? {
        if status.check_id == id {
            let _ = state
                .publisher
                .publish(
                    &vantage_mqtt::topic::status_check_region(&id, &status.region),
                    Vec::new(),
                    true,
                )
                .await;
        }
    }
    state.store.delete_check_status(&id).await?;
    state.reassign.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_body() -> CheckBody {
        serde_json::from_value(serde_json::json!({
            "name": "web", "kind": {"type": "http", "url": "https://example.com/"},
            "regions": ["us-east", "europe"], "interval_s": 30, "timeout_ms": 5000, "quorum": 2
        }))
        .unwrap()
    }

    #[test]
    fn valid_bodies_pass_and_each_bad_field_is_named() {
        validate(&http_body()).unwrap();
        type Mutation = fn(&mut CheckBody);
        let cases: Vec<(Mutation, &str)> = vec![
            (|b| b.id = Some("Bad Id".into()), "id"),
            (|b| b.name = String::new(), "name"),
            (|b| b.interval_s = 0, "interval_s"),
            (|b| b.timeout_ms = 50, "timeout_ms"),
            (|b| b.regions.clear(), "regions"),
            (|b| b.regions.push("a/b".into()), "region"),
            (|b| b.quorum = 3, "quorum"),
            (
                |b| b.kind = CheckKind::Http(HttpCheck::get("ftp://x/")),
                "url",
            ),
            (
                |b| {
                    b.kind = CheckKind::Http(HttpCheck {
                        method: "BREW".into(),
                        ..HttpCheck::get("http://x/")
                    })
                },
                "method",
            ),
            (
                |b| b.kind = CheckKind::Tcp(TcpCheck::connect("h", 0)),
                "port",
            ),
            (
                |b| {
                    let mut http = HttpCheck::get("https://x/");
                    http.headers.insert("x-key".into(), redact::MARK.into());
                    b.kind = CheckKind::Http(http);
                },
                "redaction mark",
            ),
        ];
        for (mutate, field) in cases {
            let mut body = http_body();
            mutate(&mut body);
            match validate(&body) {
                Err(ApiError::Unprocessable(message)) => {
                    assert!(message.contains(field), "{message:?} does not name {field}")
                }
                other => panic!("{field}: expected a 422, got {other:?}"),
            }
        }
    }
}
