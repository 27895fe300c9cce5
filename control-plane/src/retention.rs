//! Retention: a background task that deletes raw rows, rollups and integration events past
//! their window, in
//! small transactions, packs the days that are over (PostgreSQL), and counts both.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::AppState;
use crate::store::rollups::Expired;

/// Runs one retention pass now and counts its deletions.
///
/// # Errors
/// Store errors; rows deleted before the error stay deleted and are counted on the next pass.
pub async fn run_once(state: &AppState) -> Result<Expired, crate::store::StoreError> {
    let (keep, now) = (state.settings.retention(), crate::store::now_ms());
    let made = state.store.prepare_partitions(&keep, now).await?;
    if !made.is_empty() {
        tracing::info!(?made, "Day partitions made");
    }
    let expired = state.store.expire(&keep, now).await?;
    let c = &state.counters;
    c.expired_results
        .fetch_add(expired.results, Ordering::Relaxed);
    c.expired_host_metrics
        .fetch_add(expired.host_metrics, Ordering::Relaxed);
    c.expired_rollup_minute
        .fetch_add(expired.rollup_minute, Ordering::Relaxed);
    c.expired_rollup_hour
        .fetch_add(expired.rollup_hour, Ordering::Relaxed);
    c.packed_rows.fetch_add(expired.packed, Ordering::Relaxed);
    let events = state
        .store
        .expire_events(now - state.settings.retention_events_s * 1000)
        .await?;
    c.expired_events.fetch_add(events, Ordering::Relaxed);
    Ok(Expired { events, ..expired })
}

/// Runs a retention pass every `retention_interval_s`, the first one a minute after start.
pub async fn worker(state: AppState) {
    let every = Duration::from_secs(state.settings.retention_interval_s.unsigned_abs().max(60));
    tokio::time::sleep(Duration::from_secs(60).min(every)).await;
    loop {
        match run_once(&state).await {
            Ok(expired) if expired != Expired::default() => {
                tracing::info!(?expired, "Expired rows deleted");
            }
            Ok(_) => {}
            Err(error) => {
                state
                    .counters
                    .retention_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "Retention pass failed; the next one goes on");
            }
        }
        tokio::time::sleep(every).await;
    }
}
