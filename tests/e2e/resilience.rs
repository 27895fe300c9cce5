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

/// PostgreSQL stopped at once mid-ingest (as a crash: connections cut mid-transaction), down
/// for 15 s while the agent keeps measuring, then started again (it replays its WAL). A
/// commit waits up to the pool's 10 s for a connection, so some fail and are counted; the
/// control plane stays up, acknowledges nothing it did not commit, and takes the agent's
/// resends once the store is back: every seq stored once, the rows measured during the
/// outage with their own measurement times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_ingest_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let pg = vantage_tests::postgres::PrivatePostgres::start()?;
    let store = TestStore {
        backend: Backend::Postgres,
        url: Some(pg.url()),
    };
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    for i in 0..4 {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("tcp-{i}"), "name": "tcp", "interval_s": 1,
                    "timeout_ms": 500, "regions": ["asia"],
                    "kind": {"type": "tcp", "host": "127.0.0.1", "port": target_port}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let token = cp.enrollment_token("asia", 1).await?;
    let agent = Agent::start(&cp, &token, "metrics_interval_s = 1")?;
    let id = agent.wait_enrolled().await?;
    wait_for("results flowing", Duration::from_secs(20), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        (rows.as_array()?.len() >= 8).then_some(())
    })
    .await?;
    let errors_before = cp.counter("vantage_ingest_commit_errors_total").await?;

    pg.stop_immediately()?;
    let down_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(cp.is_running(), "the control plane died with its store");
    pg.start_again()?;
    let up_at = vantage_agent::now_ms();

    // The agent's backlog arrives: about 5 rows a second of the outage.
    let pool = cp.store_pool().await?;
    let n_outage = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM results WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3) \
             + (SELECT COUNT(*) FROM host_metrics WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3)",
        )
        .bind(&id)
        .bind(down_at + 500)
        .bind(up_at - 500)
        .fetch_one(&pool)
        .await
        .ok()?;
        Some(n)
    };
    wait_for("the outage's rows", Duration::from_secs(60), || async {
        n_outage().await.filter(|n| *n >= 60)
    })
    .await
    .with_context(|| format!("{}\n{}", cp.log_tail(), agent.log()))?;
    let errors = cp.counter("vantage_ingest_commit_errors_total").await? - errors_before;
    assert!(
        errors > 0,
        "no failed commit was counted while the store was down"
    );

    // Exactly once: every seq from 1 to the highest stored one is there, once (stored_seqs
    // fails on a doubled seq).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost seqs: {missing:?}");
    println!(
        "PostgreSQL down {} ms: {errors} failed commits, {max} seqs stored once each, {:?} rows measured during the outage",
        up_at - down_at,
        n_outage().await
    );
    assert!(cp.is_running());
    Ok(())
}

/// The agent's path to the control plane goes half-open for 30 s: nftables inside its network
/// namespace drops every packet of the MQTT connection, silently (no reset, no close), and
/// the SYNs of its reconnects. The agent notices through its keep-alive, keeps measuring into
/// its spool, and once packets pass again reconnects and drains it: every seq stored once,
/// the rows measured inside the hole with their own measurement times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_path_is_noticed_and_loses_nothing() -> anyhow::Result<()> {
    use vantage_tests::regions::Region;
    let store = TestStore::create(Backend::Sqlite).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let region = Region::new()?;
    let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _api = region.forward(cp.http_port, local(cp.http_port))?;
    let _mqtt = region.forward(cp.mqtt_port, local(cp.mqtt_port))?;
    let _target = region.forward(target.port(), target)?;
    for i in 0..2 {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("tcp-{i}"), "name": "tcp", "interval_s": 1,
                    "timeout_ms": 500, "regions": ["r1"],
                    "kind": {"type": "tcp", "host": "127.0.0.1", "port": target.port()}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let token = cp.enrollment_token("r1", 1).await?;
    let agent = Agent::start_command(
        &cp,
        &token,
        "metrics_interval_s = 1",
        region.command(&vantage_tests::bin("vantage-agent")),
    )?;
    let id = agent.wait_enrolled().await?;
    wait_for("results flowing", Duration::from_secs(30), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        (rows.as_array()?.len() >= 4).then_some(())
    })
    .await
    .with_context(|| agent.log())?;

    let hole = region.black_hole(cp.mqtt_port)?;
    let hole_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(hole);
    let open_at = vantage_agent::now_ms();

    // About 3 rows a second were measured inside the hole; they arrive once packets pass.
    let pool = cp.store_pool().await?;
    let n_inside = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM results WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3) \
             + (SELECT COUNT(*) FROM host_metrics WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3)",
        )
        .bind(&id)
        .bind(hole_at + 500)
        .bind(open_at - 500)
        .fetch_one(&pool)
        .await
        .ok()?;
        Some(n)
    };
    let drained = wait_for(
        "the rows measured inside the hole",
        Duration::from_secs(90),
        || async { n_inside().await.filter(|n| *n >= 75) },
    )
    .await;
    if drained.is_err() {
        anyhow::bail!(
            "{:?} rows measured inside the hole stored\n{}",
            n_inside().await,
            agent.log()
        );
    }
    let drained_after_ms = vantage_agent::now_ms() - open_at;
    // It noticed the dead path (its keep-alive went unanswered) and made a new connection.
    let log = agent.log();
    assert!(
        log.contains("Disconnected") && log.matches("Connected").count() >= 2,
        "the agent did not notice the dead path and reconnect:\n{log}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost seqs: {missing:?}");
    println!(
        "half-open for {} ms: {:?} rows measured inside it, stored {drained_after_ms} ms after \
         packets passed again; {max} seqs stored once each",
        open_at - hole_at,
        n_inside().await
    );
    assert!(cp.is_running());
    Ok(())
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pid`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

crate::both_backends!(
    a_stalled_control_plane_loses_nothing,
    a_stalled_control_plane_loses_nothing
);

/// The control plane stalls for 30 s (SIGSTOP: its listeners still take connections in the
/// kernel's backlog, but nothing answers them, nor the open sessions). The agent's keep-alive
/// goes unanswered and its reconnects hang in the TLS handshake; it keeps measuring into its
/// spool. After SIGCONT the control plane works through the stale connections, the agent
/// reconnects and drains: every seq stored once, the rows measured during the stall with
/// their own measurement times.
async fn a_stalled_control_plane_loses_nothing(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    for i in 0..2 {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("tcp-{i}"), "name": "tcp", "interval_s": 1,
                    "timeout_ms": 500, "regions": ["asia"],
                    "kind": {"type": "tcp", "host": "127.0.0.1", "port": target_port}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let token = cp.enrollment_token("asia", 1).await?;
    let agent = Agent::start(&cp, &token, "metrics_interval_s = 1")?;
    let id = agent.wait_enrolled().await?;
    wait_for("results flowing", Duration::from_secs(20), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        (rows.as_array()?.len() >= 4).then_some(())
    })
    .await?;

    let pid = cp.pid().context("control plane pid")?;
    signal(pid, "-STOP")?;
    let stalled_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(30)).await;
    signal(pid, "-CONT")?;
    let resumed_at = vantage_agent::now_ms();

    let pool = cp.store_pool().await?;
    let n_stalled = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM results WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3) \
             + (SELECT COUNT(*) FROM host_metrics WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3)",
        )
        .bind(&id)
        .bind(stalled_at + 500)
        .bind(resumed_at - 500)
        .fetch_one(&pool)
        .await
        .ok()?;
        Some(n)
    };
    let drained = wait_for(
        "the rows measured during the stall",
        Duration::from_secs(90),
        || async { n_stalled().await.filter(|n| *n >= 75) },
    )
    .await;
    if drained.is_err() {
        anyhow::bail!(
            "{:?} rows measured during the stall stored\n{}\n{}",
            n_stalled().await,
            cp.log_tail(),
            agent.log()
        );
    }
    let drained_after_ms = vantage_agent::now_ms() - resumed_at;
    let log = agent.log();
    assert!(
        log.contains("Disconnected") && log.matches("Connected").count() >= 2,
        "the agent did not notice the stall and reconnect:\n{log}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost seqs: {missing:?}");
    println!(
        "stalled for {} ms: {:?} rows measured during it, stored {drained_after_ms} ms after \
         it resumed; {max} seqs stored once each",
        resumed_at - stalled_at,
        n_stalled().await
    );
    assert!(cp.is_running());
    let (status, _) = cp.get("/healthz").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// Debian's libfaketime (package faketime), for a process whose wall clock the test sets.
fn libfaketime() -> anyhow::Result<std::path::PathBuf> {
    std::fs::read_dir("/usr/lib")?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("faketime").join("libfaketimeMT.so.1"))
        .find(|path| path.exists())
        .context("no libfaketimeMT.so.1: scripts/test installs Debian's faketime")
}

/// The agent's wall clock jumps 2 h back for 10 s, then a day forward for 10 s, then back to
/// the true time, as a badly stepped NTP or a VM restored from a snapshot would do (its
/// monotonic clock runs on; libfaketime moves only the wall clock). The checks keep their
/// pace through both jumps, every row carries the time the agent's clock showed when it was
/// measured, and every seq is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_clock_jumping_back_and_forward_loses_nothing() -> anyhow::Result<()> {
    const BACK_MS: i64 = 2 * 3600 * 1000;
    const FORWARD_MS: i64 = 24 * 3600 * 1000;
    let store = TestStore::create(Backend::Sqlite).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    for i in 0..2 {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("tcp-{i}"), "name": "tcp", "interval_s": 1,
                    "timeout_ms": 500, "regions": ["asia"],
                    "kind": {"type": "tcp", "host": "127.0.0.1", "port": target_port}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let clock = tempfile::NamedTempFile::new()?;
    std::fs::write(clock.path(), "+0\n")?;
    let command = vec![
        std::path::PathBuf::from("env"),
        format!("LD_PRELOAD={}", libfaketime()?.display()).into(),
        format!("FAKETIME_TIMESTAMP_FILE={}", clock.path().display()).into(),
        "FAKETIME_NO_CACHE=1".into(),
        "DONT_FAKE_MONOTONIC=1".into(),
        vantage_tests::bin("vantage-agent"),
    ];
    let token = cp.enrollment_token("asia", 1).await?;
    let agent = Agent::start_command(&cp, &token, "metrics_interval_s = 1", command)?;
    let id = agent.wait_enrolled().await?;
    wait_for("results flowing", Duration::from_secs(20), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        (rows.as_array()?.len() >= 4).then_some(())
    })
    .await?;

    std::fs::write(clock.path(), "-2h\n")?;
    let back_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    std::fs::write(clock.path(), "+1d\n")?;
    let forward_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    std::fs::write(clock.path(), "+0\n")?;
    let true_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Rows measured in each window, by the time the agent's clock showed.
    let pool = cp.store_pool().await?;
    let count = |table: &'static str, from: i64, to: i64| {
        let (pool, id) = (&pool, &id);
        async move {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table} WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3"
            )))
            .bind(id)
            .bind(from + 500)
            .bind(to - 500)
            .fetch_one(pool)
            .await?;
            anyhow::Ok(n)
        }
    };
    let windows =
        wait_for(
            "the rows of both jumps",
            Duration::from_secs(30),
            || async {
                let back = count("results", back_at - BACK_MS, forward_at - BACK_MS)
                    .await
                    .ok()?;
                let forward = count("results", forward_at + FORWARD_MS, true_at + FORWARD_MS)
                    .await
                    .ok()?;
                let back_metrics = count("host_metrics", back_at - BACK_MS, forward_at - BACK_MS)
                    .await
                    .ok()?;
                let forward_metrics = count(
                    "host_metrics",
                    forward_at + FORWARD_MS,
                    true_at + FORWARD_MS,
                )
                .await
                .ok()?;
                // Two checks and metrics each second: 9 s of each window counted.
                (back >= 14 && forward >= 14 && back_metrics >= 7 && forward_metrics >= 7)
                    .then_some((back, forward, back_metrics, forward_metrics))
            },
        )
        .await;
    let windows = match windows {
        Ok(windows) => windows,
        Err(error) => anyhow::bail!("{error:#}\n{}", agent.log()),
    };
    // And after the clock came back, the checks go on at the true time.
    wait_for(
        "rows at the true time again",
        Duration::from_secs(15),
        || async {
            (count("results", true_at, vantage_agent::now_ms())
                .await
                .ok()?
                >= 4)
                .then_some(())
        },
    )
    .await?;

    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost seqs: {missing:?}");
    println!(
        "clock 2 h back, then 1 d forward: (results, results, metrics, metrics) measured in \
         the two windows {windows:?}; {max} seqs stored once each"
    );
    assert!(cp.is_running());
    Ok(())
}

/// How long [`a_cut_link_loses_nothing`] keeps the link cut: 60 s unless
/// `VANTAGE_TEST_LINK_CUT_S` says otherwise (BENCHMARKS.md records a 600 s run).
fn link_cut() -> Duration {
    let seconds = std::env::var("VANTAGE_TEST_LINK_CUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// The agent's only path to the control plane is cut (connections closed, nothing listening)
/// while it measures 4 checks and its metrics every second; the control plane stays up. Once
/// the path is back, the agent reconnects within its backoff and drains its spool: every seq
/// stored once, each row measured during the cut with its own time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_nothing() -> anyhow::Result<()> {
    use vantage_tests::regions::Region;
    let store = TestStore::create(Backend::Sqlite).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let region = Region::new()?;
    let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _api = region.forward(cp.http_port, local(cp.http_port))?;
    let mqtt = region.forward(cp.mqtt_port, local(cp.mqtt_port))?;
    let _target = region.forward(target.port(), target)?;
    for i in 0..4 {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("tcp-{i}"), "name": "tcp", "interval_s": 1,
                    "timeout_ms": 500, "regions": ["r1"],
                    "kind": {"type": "tcp", "host": "127.0.0.1", "port": target.port()}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let token = cp.enrollment_token("r1", 1).await?;
    let agent = Agent::start_command(
        &cp,
        &token,
        "metrics_interval_s = 1",
        region.command(&vantage_tests::bin("vantage-agent")),
    )?;
    let id = agent.wait_enrolled().await?;
    wait_for("results flowing", Duration::from_secs(30), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        (rows.as_array()?.len() >= 8).then_some(())
    })
    .await
    .with_context(|| agent.log())?;

    let cut = link_cut();
    mqtt.cut();
    let cut_at = vantage_agent::now_ms();
    tokio::time::sleep(cut).await;
    mqtt.restore()?;
    let restored_at = vantage_agent::now_ms();

    // 5 rows a second were measured during the cut; nine tenths of them is the floor.
    let expected = (cut.as_secs() * 5 * 9 / 10) as i64;
    let pool = cp.store_pool().await?;
    let n_cut = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM results WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3) \
             + (SELECT COUNT(*) FROM host_metrics WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3)",
        )
        .bind(&id)
        .bind(cut_at + 500)
        .bind(restored_at - 500)
        .fetch_one(&pool)
        .await
        .ok()?;
        Some(n)
    };
    // The agent's backoff is at most 30 s (with jitter), then the spool drains.
    let drained = wait_for(
        "the rows measured during the cut",
        Duration::from_secs(120),
        || async { n_cut().await.filter(|n| *n >= expected) },
    )
    .await;
    if drained.is_err() {
        anyhow::bail!(
            "{:?} of {expected} rows measured during the cut stored\n{}",
            n_cut().await,
            agent.log()
        );
    }
    let drained_after_ms = vantage_agent::now_ms() - restored_at;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seqs = stored_seqs(&pool, &id).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost seqs: {missing:?}");
    println!(
        "link cut for {} ms: {:?} rows measured during it, stored {drained_after_ms} ms after \
         the link was back; {max} seqs stored once each",
        restored_at - cut_at,
        n_cut().await
    );
    assert!(cp.is_running());
    Ok(())
}
