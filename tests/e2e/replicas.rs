//! Several control-plane replicas on one PostgreSQL: exactly one holds the scheduling lease
//! and does the scheduled work (here: running the checks of a region with no agent), and when
//! it is killed -9 another takes over within one check interval; what one replica commits
//! reaches the live clients of the others. PostgreSQL only: SQLite is one process's store.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vantage_tests::{Backend, ControlPlane, TestStore, wait_for};

/// The check interval of the lone check in the dark region.
const INTERVAL_S: i64 = 3;

/// Copies what replicas share besides the store: the CA (agents trust one CA, whichever replica
/// they reach) and the admin token file (the token itself is in the store).
fn share_identity(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to.join("pki"))?;
    for name in ["ca.pem", "ca.key"] {
        std::fs::copy(from.join("pki").join(name), to.join("pki").join(name))?;
    }
    std::fs::copy(from.join("admin-token"), to.join("admin-token"))?;
    Ok(())
}

async fn leads(cp: &ControlPlane) -> anyhow::Result<bool> {
    let (status, health) = cp.get("/healthz").await?;
    anyhow::ensure!(status == 200, "{status} {health}");
    health["leader"].as_bool().context("no leader field")
}

/// Fallback results of the lone check measured at or after `since_ms`, oldest first.
async fn fallback_results(cp: &ControlPlane, since_ms: i64) -> anyhow::Result<Vec<Value>> {
    let (status, rows) = cp
        .get(&format!("/api/v1/results?check=lone&from_ms={since_ms}"))
        .await?;
    anyhow::ensure!(status == 200, "{status} {rows}");
    let mut rows: Vec<Value> = rows.as_array().context("rows")?.clone();
    rows.sort_by_key(|r| r["measured_at_ms"].as_i64());
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_schedules_and_another_takes_over_within_one_interval() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Postgres).await?;
    // Heartbeats every second: the fallback waits three of them after a process starts.
    let env = [("VANTAGE_HEARTBEAT_INTERVAL_S", "1")];
    let mut first = ControlPlane::start_with(&store, &env).await?;
    wait_for(
        "the first replica to lead",
        Duration::from_secs(10),
        || async { leads(&first).await.ok().filter(|l| *l) },
    )
    .await
    .with_context(|| first.log_tail())?;
    let dir = tempfile::tempdir()?;
    share_identity(&first.data_dir, &dir.path().join("data"))?;
    let second = ControlPlane::start_in(&store, &dir.path().join("data"), &env).await?;

    // A live client of the follower: it sees what the leader commits.
    let mut live = second.live_socket("kind=result&check=lone").await?;

    // A region with no agent: its check runs on the fallback executor of the leader only.
    first.enrollment_token("dark", 1).await?;
    let (status, body) = first
        .post(
            "/api/v1/checks",
            json!({"id": "lone", "name": "lone", "interval_s": INTERVAL_S, "timeout_ms": 500,
                "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9}, "regions": ["dark"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let started = vantage_tests::now_ms();
    wait_for(
        "three fallback results",
        Duration::from_secs(30),
        || async {
            let rows = fallback_results(&second, started).await.ok()?;
            (rows.len() >= 3).then_some(())
        },
    )
    .await
    .with_context(|| first.log_tail())?;
    // The follower saw the same check and region (its plan has it on fallback too), yet ran
    // nothing: one result per interval reached the store, not two.
    assert!(leads(&first).await?);
    assert!(!leads(&second).await?, "two replicas lead");
    assert_eq!(second.counter("vantage_leader").await?, 0);
    assert_eq!(first.counter("vantage_leader").await?, 1);
    assert_eq!(second.counter("vantage_fallback_runs_total").await?, 0);
    let ran = first.counter("vantage_fallback_runs_total").await?;
    let rows = fallback_results(&second, started).await?;
    assert!(ran >= 3, "the leader ran {ran}");
    assert!(
        rows.len() as u64 <= ran,
        "{} results stored, {ran} run by the leader",
        rows.len()
    );

    // The follower ran no check and ingested nothing, yet its client got the leader's
    // results: relayed through PostgreSQL.
    let relayed: Value = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match live.next().await {
                Some(Ok(Message::Text(text))) => {
                    let event: Value = serde_json::from_str(&text)?;
                    if event["kind"] == "result" && event["check_id"] == "lone" {
                        return anyhow::Ok(event);
                    }
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("live socket ended: {other:?}"),
            }
        }
    })
    .await
    .context("no relayed result on the follower's live socket within 10 s")??;
    assert_eq!(relayed["region"], "dark", "{relayed}");
    assert!(
        first
            .counter("vantage_live_relay_events_total{direction=\"sent\"}")
            .await?
            >= 1
    );
    assert!(
        second
            .counter("vantage_live_relay_events_total{direction=\"received\"}")
            .await?
            >= 1
    );

    // Kill -9 the leader: the other replica takes the lease and runs the check within one
    // interval of the kill.
    first.kill();
    let killed = Instant::now();
    let killed_ms = vantage_tests::now_ms();
    wait_for(
        "the second replica to lead",
        Duration::from_secs(10),
        || async { leads(&second).await.ok().filter(|l| *l) },
    )
    .await
    .with_context(|| second.log_tail())?;
    let takeover = killed.elapsed();
    let first_after = wait_for(
        "a fallback result from the new leader",
        Duration::from_secs(20),
        || async {
            let rows = fallback_results(&second, killed_ms).await.ok()?;
            rows.first().and_then(|r| r["measured_at_ms"].as_i64())
        },
    )
    .await
    .with_context(|| second.log_tail())?;
    let last_before = fallback_results(&second, started)
        .await?
        .iter()
        .filter_map(|r| r["measured_at_ms"].as_i64())
        .filter(|at| *at < killed_ms)
        .max()
        .context("a result before the kill")?;
    println!(
        "lease taken over {} ms after kill -9; first result {} ms after it; {} ms between the \
         last result of the dead leader and the first of the new one (interval {} ms)",
        takeover.as_millis(),
        first_after - killed_ms,
        first_after - last_before,
        INTERVAL_S * 1000
    );
    assert!(
        first_after - killed_ms <= INTERVAL_S * 1000,
        "the new leader's first result came {} ms after the kill (interval {INTERVAL_S} s)",
        first_after - killed_ms
    );
    assert!(second.counter("vantage_fallback_runs_total").await? >= 1);
    assert_eq!(second.counter("vantage_leader").await?, 1);

    // Nothing stored twice: every fallback result has its own seq.
    let rows = fallback_results(&second, started).await?;
    let mut seqs: Vec<i64> = rows.iter().filter_map(|r| r["seq"].as_i64()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "duplicate seqs among {rows:?}");
    Ok(())
}
