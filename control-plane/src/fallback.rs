//! The fallback executor: the control plane runs the checks of regions that have no healthy
//! agent itself, with the agent library's probes, so results keep flowing (and verdicts keep
//! being judged) while a region is dark.
//!
//! It follows [`crate::assign::Plan::fallback`]: one task per (check, region) on the plan,
//! running the check every interval, stopped as soon as an agent of the region takes the
//! check back. Its results are stored like an agent's, under the agent id
//! [`FALLBACK_AGENT_ID`] and the region they stand in for, and go through the same commit,
//! fan-out and verdict path. Only the replica holding the scheduling lease
//! ([`crate::lease`]) runs them; a replica that stops leading stops its tasks at once.
//! Their seqs start at the current time in microseconds when a replica starts leading and
//! increase by one per result, so they stay unique across restarts and lead switches without a
//! lookup (as long as the replicas' clocks agree to within the time between two switches).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use vantage_mqtt::CheckSpec;

use crate::AppState;
use crate::ingest::FALLBACK_AGENT_ID;
use crate::store::ingest::IngestBatch;
use crate::store::now_ms;

/// Runs one (check, region) until aborted.
async fn run_one(state: AppState, spec: CheckSpec, region: String, seq: Arc<AtomicU64>) {
    let interval = Duration::from_secs(u64::from(spec.interval_s.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let measured_at_ms = now_ms();
        let outcome = vantage_agent::probe::run_check(&spec).await;
        let result = outcome.into_result(
            seq.fetch_add(1, Ordering::Relaxed),
            &spec.id,
            measured_at_ms,
        );
        state.counters.fallback_runs.fetch_add(1, Ordering::Relaxed);
        let batch = IngestBatch {
            received_at_ms: now_ms(),
            results: vec![(FALLBACK_AGENT_ID.to_owned(), region.clone(), result)],
            ..IngestBatch::default()
        };
        crate::ingest::commit_with_retry(&state, batch).await;
    }
}

/// Keeps one task per (check, region) on the fallback plan. It starts acting three heartbeat
/// intervals after start: right after a restart every agent is offline until it reconnects,
/// and the fleet's checks should not all run here meanwhile.
pub async fn worker(state: AppState) {
    let grace = Duration::from_secs(u64::from(state.settings.heartbeat_interval_s.max(1)) * 3);
    tokio::time::sleep(grace).await;
    let seq = Arc::new(AtomicU64::new(0));
    let mut plan = state.plan.subscribe();
    let mut leading = state.lease.subscribe();
    let mut running: HashMap<(String, String), (CheckSpec, JoinHandle<()>)> = HashMap::new();
    loop {
        let leads = *leading.borrow_and_update();
        if leads && running.is_empty() {
            // Seqs start afresh from the clock on each lead, above any the previous leader
            // used (it counted up from when it took over, one per result).
            seq.fetch_max(
                u64::try_from(now_ms()).unwrap_or(0).saturating_mul(1000),
                Ordering::Relaxed,
            );
        }
        let wanted: HashMap<(String, String), CheckSpec> = if leads {
            plan.borrow_and_update()
                .fallback
                .iter()
                .map(|(spec, region)| ((spec.id.clone(), region.clone()), spec.clone()))
                .collect()
        } else {
            // Only the replica holding the scheduling lease runs checks itself.
            HashMap::new()
        };
        running.retain(|key, (spec, task)| {
            let keep = wanted.get(key) == Some(spec);
            if !keep {
                tracing::info!(check = %key.0, region = %key.1, "Fallback stops: an agent serves it again, or the check changed");
                task.abort();
            }
            keep
        });
        for (key, spec) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            tracing::warn!(check = %key.0, region = %key.1, "No online agent of the region can take the check: the control plane runs it");
            let task = tokio::spawn(run_one(
                state.clone(),
                spec.clone(),
                key.1.clone(),
                seq.clone(),
            ));
            running.insert(key, (spec, task));
        }
        tokio::select! {
            changed = plan.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            // The lease's sender lives in `state`: this never reports a closed channel.
            _ = leading.changed() => {}
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}
