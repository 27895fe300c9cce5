//! Agents and control planes dying: offline detection through the last will, sequence
//! continuity across an agent restart, and nothing lost while the control plane is down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use sqlx::Row;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, wait_for};

crate::both_backends!(
    killed_agent_goes_offline_and_its_seq_continues,
    killed_agent_goes_offline_and_its_seq_continues
);

async fn killed_agent_goes_offline_and_its_seq_continues(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let token = cp.enrollment_token("europe", 1).await?;
    let mut agent = Agent::start(&cp, &token, "metrics_interval_s = 1")?;
    let id = agent.wait_enrolled().await?;
    let before = wait_for(
        "a few committed samples",
        Duration::from_secs(20),
        || async {
            let view = cp.agent(&id).await.ok()?;
            (view["state"] == "online" && view["last_seq"].as_i64()? >= 3).then_some(view)
        },
    )
    .await?;
    let boot_before = before["boot_id"].clone();

    agent.kill();
    let killed_at = Instant::now();
    // The keep-alive window is 10 s × 1.5; the last will fires at once on a closed socket.
    wait_for("offline after kill -9", Duration::from_secs(15), || async {
        (cp.agent(&id).await.ok()?["state"] == "offline").then_some(())
    })
    .await?;
    println!("offline {:?} after kill -9", killed_at.elapsed());
    let last_seq_before = cp.agent(&id).await?["last_seq"]
        .as_i64()
        .context("last_seq")?;

    agent.spawn()?;
    let after = wait_for(
        "online again with newer samples",
        Duration::from_secs(20),
        || async {
            let view = cp.agent(&id).await.ok()?;
            (view["state"] == "online"
                && view["boot_id"] != boot_before
                && view["last_seq"].as_i64()? >= last_seq_before + 3)
                .then_some(view)
        },
    )
    .await?;
    // The restarted agent announced a next seq past everything it used before the kill: the
    // numbering continued instead of starting over (a restart from 1 would be hidden by the
    // store ignoring replays).
    let next_seq = after["next_seq"].as_i64().context("next_seq")?;
    assert!(
        next_seq > last_seq_before,
        "next_seq {next_seq} after restart, {last_seq_before} committed before"
    );
    // No sequence number was reused: every stored seq of this agent is unique and the
    // numbering went on from where it stopped.
    let pool = cp.store_pool().await?;
    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "seqs missing across the restart: {missing:?}"
    );
    assert!(max > last_seq_before);
    let boot_after = cp.agent(&id).await?["boot_id"].clone();
    assert_ne!(
        boot_before, boot_after,
        "the restarted agent has a new boot id"
    );
    Ok(())
}

/// Every seq stored for `agent` across results, metrics and events.
pub(crate) async fn stored_seqs(
    pool: &sqlx::AnyPool,
    agent: &str,
) -> anyhow::Result<BTreeSet<i64>> {
    let mut seqs = BTreeSet::new();
    let mut total = 0usize;
    for table in ["results", "host_metrics", "events"] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT seq FROM {table} WHERE agent_id = $1"
        )))
        .bind(agent)
        .fetch_all(pool)
        .await?;
        for row in rows {
            total += 1;
            seqs.insert(row.try_get::<i64, _>(0)?);
        }
    }
    assert_eq!(total, seqs.len(), "a seq is stored twice");
    Ok(seqs)
}

crate::both_backends!(
    nothing_is_lost_while_the_control_plane_is_down,
    nothing_is_lost_while_the_control_plane_is_down
);

async fn nothing_is_lost_while_the_control_plane_is_down(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "tcp-target", "name": "tcp", "interval_s": 1, "timeout_ms": 500,
                   "kind": {"type": "tcp", "host": "127.0.0.1", "port": target_port}, "regions": ["asia"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let token = cp.enrollment_token("asia", 1).await?;
    let agent = Agent::start(&cp, &token, "metrics_interval_s = 1")?;
    let id = agent.wait_enrolled().await?;
    wait_for("results flowing", Duration::from_secs(20), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        (rows.as_array()?.len() >= 2).then_some(())
    })
    .await?;

    cp.kill();
    let down_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(62)).await;
    let up_at = vantage_agent::now_ms();
    cp.spawn().await?;

    // Everything measured during the outage arrives: wait until the committed high-water
    // mark passes what was measured before the restart.
    let pool = cp.store_pool().await?;
    let outage_rows = wait_for("the outage backlog", Duration::from_secs(60), || async {
        let rows = sqlx::query(
            "SELECT measured_at_ms, received_at_ms FROM host_metrics WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3",
        )
        .bind(&id)
        .bind(down_at + 1000)
        .bind(up_at - 1000)
        .fetch_all(&pool)
        .await
        .ok()?;
        (rows.len() >= 55).then_some(rows)
    })
    .await
    .with_context(|| format!("{}\n{}", cp.log_tail(), agent.log()))?;
    // They keep their original measurement times: measured while down, received after.
    for row in &outage_rows {
        let measured: i64 = row.try_get(0)?;
        let received: i64 = row.try_get(1)?;
        assert!(
            measured < up_at && received >= up_at,
            "measured {measured} received {received}"
        );
    }
    // And the checks kept running on the agent's own clock during the outage (their rows
    // drain from the spool beside the metrics, so they may land a moment later).
    let n_results = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM results WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3",
        )
        .bind(&id)
        .bind(down_at + 1000)
        .bind(up_at - 1000)
        .fetch_one(&pool)
        .await
        .ok()?;
        Some(n)
    };
    let drained = wait_for("the outage's results", Duration::from_secs(30), || async {
        n_results().await.filter(|n| *n >= 55)
    })
    .await;
    assert!(
        drained.is_ok(),
        "only {:?} results measured during the outage",
        n_results().await
    );

    // Exactly once: every seq from 1 to the highest stored one is there, once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost seqs: {missing:?}");
    assert!(
        max >= 120,
        "only {max} entries in a 62 s outage at two per second"
    );
    // The rollups, merged in each batch's transaction, lost and doubled nothing across the
    // kill and the replays after it: one snapshot sees the same counts in raw and rolled up.
    let (n_results, n_minute, n_hour, n_metrics, n_cpu_hour): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM results), \
             (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM rollup_checks_minute), \
             (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM rollup_checks_hour), \
             (SELECT COUNT(*) FROM host_metrics), \
             (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM rollup_metrics_hour WHERE metric = 0)",
        )
        .fetch_one(&pool)
        .await?;
    assert_eq!((n_minute, n_hour), (n_results, n_results));
    assert_eq!(n_cpu_hour, n_metrics);
    Ok(())
}

crate::both_backends!(
    spool_overflow_is_counted_and_reported,
    spool_overflow_is_counted_and_reported
);

/// With a tiny spool and the control plane down, the oldest entries go and the agent
/// reports how many in its heartbeats.
async fn spool_overflow_is_counted_and_reported(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start_with(&store, &[("VANTAGE_HEARTBEAT_INTERVAL_S", "1")]).await?;
    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(
        &cp,
        &token,
        "metrics_interval_s = 1\n[spool]\nmax_entries = 3",
    )?;
    let id = agent.wait_enrolled().await?;
    cp.wait_agent_state(&id, "online", Duration::from_secs(20))
        .await?;
    cp.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    cp.spawn().await?;
    let view = wait_for(
        "the drop count in a heartbeat",
        Duration::from_secs(30),
        || async {
            let view = cp.agent(&id).await.ok()?;
            (view["spool_dropped_total"].as_i64()? >= 3).then_some(view)
        },
    )
    .await
    .with_context(|| agent.log())?;
    // The newest entries survived and were delivered.
    let pool = cp.store_pool().await?;
    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("rows")?;
    assert!(max >= 8, "{view}");
    // Every seq up to the newest is either stored or counted as dropped, and the dropped
    // ones are the oldest of the outage: one gap.
    let dropped = view["spool_dropped_total"].as_i64().context("dropped")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    // A dropped entry may have been committed already when the control plane died before its
    // ack went out (at most a spool's worth: 3), so drops can exceed gaps, never the reverse.
    let n_missing = missing.len() as i64;
    assert!(
        n_missing <= dropped && dropped - n_missing <= 3,
        "missing {missing:?}, dropped {dropped}"
    );
    assert!(
        missing.windows(2).all(|w| w[1] == w[0] + 1),
        "the dropped entries are not one run of the oldest: {missing:?}"
    );
    Ok(())
}

/// After a restart with no agent back, the control plane runs the checks of dark regions
/// itself at once (it assigns once at start), not only once an agent or a check changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_runs_dark_regions_checks_itself() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    // Heartbeats every 2 s: the fallback waits three of them after a start.
    let mut cp = ControlPlane::start_with(&store, &[("VANTAGE_HEARTBEAT_INTERVAL_S", "2")]).await?;
    // The region exists (its token made it) but no agent ever enrolls.
    cp.enrollment_token("dark", 1).await?;
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "lone", "name": "lone", "interval_s": 1, "timeout_ms": 500,
                "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9}, "regions": ["dark"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    async fn results_after(cp: &ControlPlane, since: i64) -> Option<()> {
        let (_, rows) = cp
            .get(&format!("/api/v1/results?check=lone&from_ms={since}"))
            .await
            .ok()?;
        (!rows.as_array()?.is_empty()).then_some(())
    }
    wait_for("fallback results", Duration::from_secs(15), || {
        results_after(&cp, vantage_tests::now_ms() - 60_000)
    })
    .await
    .with_context(|| cp.log_tail())?;
    cp.kill();
    cp.spawn().await?;
    let restarted = vantage_tests::now_ms();
    wait_for(
        "fallback results after the restart",
        Duration::from_secs(15),
        || results_after(&cp, restarted),
    )
    .await
    .with_context(|| cp.log_tail())?;
    Ok(())
}
