//! Assignment: which agent runs which check, and each agent's retained desired config.
//!
//! A check with regions [..] is assigned to every online, unrevoked agent of those regions.
//! Each online agent's desired config (its checks, intervals and a revision that increases
//! with every change) is stored and published retained on `agents/{id}/config`; an agent
//! that is offline keeps its last config until it is back. Runs are serialised by a lock so
//! two concurrent changes cannot interleave their revisions.

use std::collections::{BTreeMap, HashMap};

use vantage_mqtt::{
    AgentTopic, CheckKind, CheckSpec, DesiredConfig, MAX_CONFIG_BYTES, decode_limited, encode,
    topic,
};

use crate::AppState;
use crate::store::{CheckRow, StoreError};

/// The wire spec of a stored check, if its stored JSON is readable.
pub fn check_spec(check: &CheckRow) -> Option<CheckSpec> {
    let kind: CheckKind = serde_json::from_str(&check.spec).ok()?;
    Some(CheckSpec {
        id: check.id.clone(),
        interval_s: u32::try_from(check.interval_s).ok()?,
        timeout_ms: u32::try_from(check.timeout_ms).ok()?,
        kind,
    })
}

/// The regions of a stored check.
pub fn check_regions(check: &CheckRow) -> Vec<String> {
    serde_json::from_str(&check.regions).unwrap_or_default()
}

/// Recomputes every assignment and republishes the configs that changed.
///
/// # Errors
/// Store errors; nothing is published for a run that failed.
pub async fn reconcile(state: &AppState) -> Result<(), StoreError> {
    let _guard = state.assign_lock.lock().await;
    let agents = state.store.list_agents(None).await?;
    let checks = state.store.list_checks().await?;
    let stored: HashMap<String, String> =
        state.store.desired_configs().await?.into_iter().collect();

    let mut per_agent: BTreeMap<String, Vec<CheckSpec>> = BTreeMap::new();
    let mut assignments = Vec::new();
    for agent in agents
        .iter()
        .filter(|a| a.revoked_at_ms.is_none() && a.state == "online")
    {
        per_agent.entry(agent.id.clone()).or_default();
    }
    for check in checks.iter().filter(|c| c.enabled) {
        let Some(spec) = check_spec(check) else {
            tracing::warn!(check = %check.id, "Stored check does not parse; not assigned");
            continue;
        };
        let regions = check_regions(check);
        for agent in agents.iter().filter(|a| {
            a.revoked_at_ms.is_none() && a.state == "online" && regions.contains(&a.region)
        }) {
            assignments.push((check.id.clone(), agent.id.clone(), agent.region.clone()));
            per_agent
                .entry(agent.id.clone())
                .or_default()
                .push(spec.clone());
        }
    }
    state.store.replace_assignments(&assignments).await?;

    for agent in agents
        .iter()
        .filter(|a| a.revoked_at_ms.is_none() && a.state == "online")
    {
        let checks = per_agent.remove(&agent.id).unwrap_or_default();
        let previous: Option<DesiredConfig> = stored.get(&agent.id).and_then(|json| {
            decode_limited::<DesiredConfig>(json.as_bytes(), MAX_CONFIG_BYTES).ok()
        });
        let unchanged = previous.as_ref().is_some_and(|p| {
            p.checks == checks
                && p.region == agent.region
                && p.metrics_interval_s == state.settings.metrics_interval_s
                && p.heartbeat_interval_s == state.settings.heartbeat_interval_s
        });
        let payload = if unchanged {
            // The stored text is what was published: no need to encode it again.
            stored
                .get(&agent.id)
                .cloned()
                .unwrap_or_default()
                .into_bytes()
        } else {
            let mut config = DesiredConfig {
                v: vantage_mqtt::PROTOCOL_VERSION,
                revision: 0,
                region: agent.region.clone(),
                metrics_interval_s: state.settings.metrics_interval_s,
                heartbeat_interval_s: state.settings.heartbeat_interval_s,
                checks,
            };
            // Encoded once: stored and published as is. The API refuses checks that would
            // overflow a region's config; should one slip through (concurrent changes), the
            // agent keeps its last config rather than receive one it must refuse.
            let n_checks = config.checks.len();
            let mut size = 0;
            let bumped = state
                .store
                .bump_desired_config(&agent.id, |revision| {
                    config.revision = revision as u64;
                    let text = String::from_utf8(encode(&config)).unwrap_or_default();
                    size = text.len();
                    (size <= MAX_CONFIG_BYTES).then_some(text)
                })
                .await?;
            let Some((revision, text)) = bumped else {
                tracing::error!(agent = %agent.id, size, limit = MAX_CONFIG_BYTES, n_checks, "Desired config over the size limit; not published");
                state
                    .counters
                    .config_too_large
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            };
            tracing::info!(agent = %agent.id, revision, n_checks, "Desired config changed");
            text.into_bytes()
        };
        // Published even when unchanged: after a broker restart the retained copy is gone.
        let _ = state
            .publisher
            .publish(&topic::agent(&agent.id, AgentTopic::Config), payload, true)
            .await;
    }
    Ok(())
}

/// Runs [`reconcile`] whenever agents come and go; changes arriving within 50 ms of each
/// other share one run, so a thousand agents reconnecting do not cause a thousand runs.
pub async fn worker(state: AppState) {
    loop {
        state.reassign.notified().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if let Err(error) = reconcile(&state).await {
            tracing::warn!(%error, "Reassignment failed; retrying in 1 s");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            state.reassign.notify_one();
        }
    }
}
