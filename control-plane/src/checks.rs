//! Checks: their definitions, validation, and the writes that keep the region config budget
//! and the assignment worker in step. The API, the CLI and the demo call these; they hold no
//! HTTP types, and [`CheckError`] maps to statuses in one match in `api/mod.rs`.

use serde::{Deserialize, Serialize};
use vantage_mqtt::{CheckKind, redact, topic};
#[cfg(test)]
use vantage_mqtt::{HttpCheck, TcpCheck};

use crate::AppState;
use crate::store::{CheckRow, StoreError, now_ms, random_id};

/// Why a check could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A field of the definition is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error("check {0:?} not found")]
    NotFound(String),
    /// The check does not fit into what its region's agents can hold together.
    #[error(
        "region {:?} would need {} bytes of check configs ({} checks) from its {} enrolled agent(s), over the {} bytes they hold together ({} each: an agent's config is at most {} bytes, its envelope included); enroll more agents in the region or spread the checks over more regions",
        .0.region, .0.needed, .0.n_checks, .0.n_agents, .0.room, crate::assign::AGENT_ROOM_BYTES, vantage_mqtt::MAX_CONFIG_BYTES
    )]
    Oversize(crate::assign::OverBudget),
    /// A stored definition does not decode.
    #[error("stored check {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A check's definition, as the API and the CLI take and show it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckDefinition {
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
    /// Regions that must fail for the check to be DOWN; absent: a majority of `regions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// Consecutive failures in a region before that region counts as failing.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Consecutive successes before a failing region counts as up again.
    #[serde(default = "default_recovery")]
    pub recovery: u32,
    /// Agents per region that run the check (fewer when the region has fewer online).
    #[serde(default = "default_agents_per_region")]
    pub agents_per_region: u32,
    /// Checks (`"db"`) and agents (`"agent:ag-…"`) this one depends on: while one of them is
    /// DOWN (a check) or offline (an agent), this check's incidents are marked dependent and
    /// notify nobody.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Labels (`{"team": "web"}`), for filters and maintenance windows.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Response-time anomaly alerts per region: a response time this many standard
    /// deviations from its moving average, three times in a row, opens an incident (0: off).
    #[serde(default)]
    pub anomaly_z: f64,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_interval_s() -> u32 {
    60
}
fn default_timeout_ms() -> u32 {
    10_000
}
fn default_retries() -> u32 {
    2
}
fn default_recovery() -> u32 {
    2
}
fn default_agents_per_region() -> u32 {
    1
}
fn default_enabled() -> bool {
    true
}

/// Checks every field of a definition.
///
/// # Errors
/// [`CheckError::Invalid`] naming the first invalid field.
pub fn validate(body: &CheckDefinition) -> Result<(), CheckError> {
    let invalid = |message: String| Err(CheckError::Invalid(message));
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
    if body
        .quorum
        .is_some_and(|q| q == 0 || q as usize > body.regions.len())
    {
        return invalid("quorum must be between 1 and the number of regions".into());
    }
    if !(1..=20).contains(&body.retries) {
        return invalid("retries must be 1..=20".into());
    }
    if !(1..=20).contains(&body.recovery) {
        return invalid("recovery must be 1..=20".into());
    }
    if !(1..=16).contains(&body.agents_per_region) {
        return invalid("agents_per_region must be 1..=16".into());
    }
    if body.depends_on.len() > 16 {
        return invalid("depends_on may name at most 16 checks and agents".into());
    }
    if let Some(bad) = body
        .depends_on
        .iter()
        .find(|d| !topic::valid_id(d.strip_prefix("agent:").unwrap_or(d)))
    {
        return invalid(format!(
            "depends_on: {bad:?} is neither a check id nor agent:<agent id>"
        ));
    }
    if !(body.anomaly_z == 0.0 || (2.0..=50.0).contains(&body.anomaly_z)) {
        return invalid("anomaly_z must be 0 (off) or 2..=50".into());
    }
    if body.labels.len() > 32 {
        return invalid("labels: at most 32".into());
    }
    if let Some((key, _)) = body
        .labels
        .iter()
        .find(|(k, v)| !topic::valid_id(k) || v.len() > 128 || v.chars().any(char::is_control))
    {
        return invalid(format!(
            "labels: {key:?} must be a valid id with a printable value of at most 128 bytes"
        ));
    }
    if let Some(own) = &body.id
        && body.depends_on.contains(own)
    {
        return invalid("depends_on must not name the check itself".into());
    }
    // Before the probe's own checks, which would refuse a redacted URL less clearly.
    if serde_json::to_string(&body.kind).is_ok_and(|text| text.contains(redact::MARK)) {
        return invalid(format!(
            "kind holds the redaction mark {:?} (a viewer's copy of a check?): send the real values",
            redact::MARK
        ));
    }
    vantage_agent::probe::validate(&body.kind).map_err(CheckError::Invalid)?;
    Ok(())
}

/// The row stored for a definition.
pub fn to_row(id: String, body: &CheckDefinition, created_at_ms: i64) -> CheckRow {
    CheckRow {
        id,
        name: body.name.clone(),
        kind: body.kind.clone(),
        interval_s: body.interval_s,
        timeout_ms: body.timeout_ms,
        regions: body.regions.clone(),
        quorum: body.quorum.unwrap_or(0),
        retries: body.retries,
        recovery: body.recovery,
        agents_per_region: body.agents_per_region,
        depends_on: body.depends_on.clone(),
        labels: crate::store::Labels(body.labels.clone()),
        anomaly_z: body.anomaly_z,
        enabled: body.enabled,
        created_at_ms,
        updated_at_ms: now_ms(),
    }
}

/// A stored check's definition.
pub fn to_definition(row: &CheckRow) -> CheckDefinition {
    CheckDefinition {
        id: Some(row.id.clone()),
        name: row.name.clone(),
        kind: row.kind.clone(),
        interval_s: row.interval_s,
        timeout_ms: row.timeout_ms,
        regions: row.regions.clone(),
        quorum: (row.quorum > 0).then_some(row.quorum),
        retries: row.retries,
        recovery: row.recovery,
        agents_per_region: row.agents_per_region,
        depends_on: row.depends_on.clone(),
        labels: row.labels.0.clone(),
        anomaly_z: row.anomaly_z,
        enabled: row.enabled,
    }
}

/// Refuses dependencies on checks that do not exist.
async fn check_dependencies(state: &AppState, body: &CheckDefinition) -> Result<(), CheckError> {
    for parent in &body.depends_on {
        let exists = match parent.strip_prefix("agent:") {
            Some(agent) => state.store.get_agent(agent).await?.is_some(),
            None => state.store.get_check(parent).await?.is_some(),
        };
        if !exists {
            return Err(CheckError::Invalid(format!(
                "depends_on: {parent:?} does not exist"
            )));
        }
    }
    Ok(())
}

/// Refuses a check that its regions' agents cannot hold (see [`crate::assign::ConfigBudget`]).
fn refuse_oversize(over: Option<crate::assign::OverBudget>) -> Result<(), CheckError> {
    over.map_or(Ok(()), |over| Err(CheckError::Oversize(over)))
}

/// Makes sure the check's regions exist and wakes the assignment worker, which publishes the
/// changed configs within about 50 ms (changes arriving together share one run), and the
/// re-judging worker; other replicas learn of it from the live event
/// ([`announce_change`]).
async fn after_change(
    state: &AppState,
    id: &str,
    change: &'static str,
    body: &CheckDefinition,
) -> Result<(), CheckError> {
    for region in &body.regions {
        state.store.ensure_region(region).await?;
    }
    state.reassign.notify_one();
    state.rejudge.notify_one();
    announce_change(state, id, change);
    Ok(())
}

/// Publishes a `check` live event (`change`: `created`, `updated` or `deleted`; no
/// definition, which may hold a target's secrets). The live relay carries it to the other
/// replicas, where it wakes assignment and re-judging ([`on_relayed_change`]): the leader
/// judges with the new policy at once, whichever replica's API took the change.
fn announce_change(state: &AppState, id: &str, change: &'static str) {
    state.hub.publish(crate::hub::LiveEvent {
        kind: "check",
        agent_id: String::new(),
        region: String::new(),
        check_id: Some(id.to_owned()),
        source: None,
        at_ms: now_ms(),
        data: serde_json::json!({ "change": change }).into(),
    });
}

/// What a replica does when another replica's API changed a check: assignment and
/// re-judging run again, reading the checks from the store.
pub fn on_relayed_change(state: &AppState) {
    state.reassign.notify_one();
    state.rejudge.notify_one();
}

/// Validates and stores a new check (id generated when absent); returns it as stored.
///
/// # Errors
/// Invalid, oversize, an id that is taken ([`StoreError::Conflict`]), or the store.
pub async fn create(
    state: &AppState,
    body: CheckDefinition,
) -> Result<CheckDefinition, CheckError> {
    validate(&body)?;
    check_dependencies(state, &body).await?;
    let id = body.id.clone().unwrap_or_else(|| random_id("ck-", 6));
    let row = to_row(id, &body, now_ms());
    {
        let mut budget = state.config_budget.lock().await;
        refuse_oversize(budget.over_limit(&state.store, &row).await?)?;
        state.store.insert_check(&row).await?;
        budget.apply(&row);
    }
    after_change(state, &row.id, "created", &body).await?;
    Ok(to_definition(&row))
}

/// Every stored check.
///
/// # Errors
/// The store, or a stored definition that does not decode.
pub async fn list(state: &AppState) -> Result<Vec<CheckDefinition>, CheckError> {
    Ok(state
        .store
        .list_checks()
        .await?
        .iter()
        .map(to_definition)
        .collect())
}

/// One stored check.
///
/// # Errors
/// [`CheckError::NotFound`], the store, or a definition that does not decode.
pub async fn get(state: &AppState, id: &str) -> Result<CheckDefinition, CheckError> {
    let row = state
        .store
        .get_check(id)
        .await?
        .ok_or_else(|| CheckError::NotFound(id.to_owned()))?;
    Ok(to_definition(&row))
}

/// Replaces check `id`'s definition; returns it as stored.
///
/// # Errors
/// Invalid (also a body naming another id), not found, oversize, or the store.
pub async fn update(
    state: &AppState,
    id: &str,
    body: CheckDefinition,
) -> Result<CheckDefinition, CheckError> {
    validate(&body)?;
    if body.depends_on.iter().any(|d| d == id) {
        return Err(CheckError::Invalid(
            "depends_on must not name the check itself".into(),
        ));
    }
    check_dependencies(state, &body).await?;
    if body.id.as_deref().is_some_and(|b| b != id) {
        return Err(CheckError::Invalid(
            "the body's id differs from the path's".into(),
        ));
    }
    let existing = state
        .store
        .get_check(id)
        .await?
        .ok_or_else(|| CheckError::NotFound(id.to_owned()))?;
    let row = to_row(id.to_owned(), &body, existing.created_at_ms);
    {
        let mut budget = state.config_budget.lock().await;
        refuse_oversize(budget.over_limit(&state.store, &row).await?)?;
        state.store.update_check(&row).await?;
        budget.apply(&row);
    }
    after_change(state, id, "updated", &body).await?;
    Ok(to_definition(&row))
}

/// Deletes check `id` and its retained status topics.
///
/// # Errors
/// [`CheckError::NotFound`] or the store.
pub async fn delete(state: &AppState, id: &str) -> Result<(), CheckError> {
    {
        let mut budget = state.config_budget.lock().await;
        if !state.store.delete_check(id).await? {
            return Err(CheckError::NotFound(id.to_owned()));
        }
        budget.remove(id);
    }
    // Its retained status topics go too.
    for status in state.store.list_check_status().await? {
        if status.check_id == id {
            let _ = state
                .publisher
                .publish(
                    &topic::status_check_region(id, &status.region),
                    Vec::new(),
                    true,
                )
                .await;
        }
    }
    state.store.delete_check_status(id).await?;
    state.judge.forget(id).await;
    let _ = state
        .publisher
        .publish(&topic::status_check(id), Vec::new(), true)
        .await;
    state.reassign.notify_one();
    state.rejudge.notify_one();
    announce_change(state, id, "deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_body() -> CheckDefinition {
        serde_json::from_value(serde_json::json!({
            "name": "web", "kind": {"type": "http", "url": "https://example.com/"},
            "regions": ["us-east", "europe"], "interval_s": 30, "timeout_ms": 5000, "quorum": 2
        }))
        .unwrap()
    }

    #[test]
    fn valid_bodies_pass_and_each_bad_field_is_named() {
        validate(&http_body()).unwrap();
        type Mutation = fn(&mut CheckDefinition);
        let cases: Vec<(Mutation, &str)> = vec![
            (|b| b.id = Some("Bad Id".into()), "id"),
            (|b| b.name = String::new(), "name"),
            (|b| b.interval_s = 0, "interval_s"),
            (|b| b.timeout_ms = 50, "timeout_ms"),
            (|b| b.regions.clear(), "regions"),
            (|b| b.regions.push("a/b".into()), "region"),
            (|b| b.quorum = Some(3), "quorum"),
            (|b| b.quorum = Some(0), "quorum"),
            (|b| b.retries = 0, "retries"),
            (|b| b.recovery = 21, "recovery"),
            (|b| b.agents_per_region = 0, "agents_per_region"),
            (|b| b.depends_on = vec!["Not An Id".into()], "depends_on"),
            (
                |b| {
                    b.id = Some("self".into());
                    b.depends_on = vec!["self".into()];
                },
                "itself",
            ),
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
                Err(CheckError::Invalid(message)) => {
                    assert!(message.contains(field), "{message:?} does not name {field}")
                }
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }

    /// A region holds as many bytes of checks as its enrolled agents hold together: with one
    /// agent the budget refuses the check that would overflow it, a second agent makes room,
    /// and two agents per region take twice the room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_budget_grows_with_the_regions_agents() {
        use crate::store::{AgentRow, Labels};
        let dir = tempfile::tempdir().unwrap();
        let app = crate::app::Application::build(crate::settings::Settings::ephemeral(
            dir.path().to_owned(),
        ))
        .await
        .unwrap();
        let state = app.state().clone();
        let (_, secret) = state
            .store
            .create_enrollment_token("eu", &std::collections::BTreeMap::new(), 2, 3600)
            .await
            .unwrap();
        let enroll = |id: &'static str| {
            let (state, secret) = (state.clone(), secret.clone());
            async move {
                state
                    .store
                    .enroll_agent(&secret, |grant| {
                        AgentRow::enrolled(id.into(), grant.region.clone(), Labels::default())
                    })
                    .await
                    .unwrap()
                    .unwrap();
            }
        };
        // 60 KiB bodies: about 15 such checks fill one agent's config.
        let big = |i: usize, per_region: u32| -> CheckDefinition {
            serde_json::from_value(serde_json::json!({
                "id": format!("big-{i:03}"), "name": "upload",
                "kind": {"type": "http", "url": "https://example.com/", "method": "POST",
                         "body": "x".repeat(60 * 1024)},
                "regions": ["eu"], "interval_s": 60, "timeout_ms": 5000,
                "agents_per_region": per_region
            }))
            .unwrap()
        };
        let fill = |from: usize, per_region: u32| {
            let state = state.clone();
            async move {
                let mut i = from;
                loop {
                    match create(&state, big(i, per_region)).await {
                        Ok(_) => i += 1,
                        Err(CheckError::Oversize(over)) => return (i, over),
                        Err(other) => panic!("check {i}: {other}"),
                    }
                }
            }
        };

        enroll("a1").await;
        let (n1, over) = fill(0, 1).await;
        let share = crate::assign::AGENT_ROOM_BYTES / n1;
        assert!((14..=16).contains(&n1), "one agent took {n1} checks");
        assert_eq!(
            (over.region.as_str(), over.n_agents, over.n_checks),
            ("eu", 1, n1 + 1)
        );
        assert!(over.needed > over.room && over.room == crate::assign::AGENT_ROOM_BYTES);
        let message = CheckError::Oversize(over).to_string();
        assert!(message.contains("enroll more agents"), "{message}");
        // The refused check was not stored.
        assert!(
            state
                .store
                .get_check(&format!("big-{n1:03}"))
                .await
                .unwrap()
                .is_none()
        );

        enroll("a2").await;
        let (n2, over) = fill(n1, 1).await;
        assert_eq!(over.n_agents, 2);
        assert!(
            (2 * n1 - 1..=2 * n1 + 1).contains(&n2),
            "two agents took {n2}, one {n1}"
        );

        // Deleting makes room again; a check run by both agents takes the room of two.
        for i in 0..4 {
            delete(&state, &format!("big-{i:03}")).await.unwrap();
        }
        let (n3, _) = fill(1000, 2).await;
        assert_eq!(
            n3 - 1000,
            2,
            "4 freed single shares hold 2 double ones ({share} bytes each)"
        );
        app.run_until(std::future::ready(())).await;
    }
}
