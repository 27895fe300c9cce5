//! Several control-plane replicas on one PostgreSQL: exactly one holds the scheduling lease
//! and does the scheduled work (here: running the checks of a region with no agent); when the
//! leader's lease session is cut it steps down before anyone else leads; when the leader is
//! killed -9 another takes over within one check interval; what one replica commits
//! reaches the live clients of the others; and a joining replica leaves the others' agents
//! online. PostgreSQL only: SQLite is one process's store.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vantage_control_plane::store::lease::SCHEDULER_LOCK_ID;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, share_replica_identity, wait_for};

/// The check interval of the lone check in the dark region: longer than a takeover (the new
/// leader waits `lease::TAKEOVER_WAIT`, 4 s, after taking the lock).
const INTERVAL_S: i64 = 6;

async fn leads(cp: &ControlPlane) -> anyhow::Result<bool> {
    let (status, health) = cp.get("/healthz").await?;
    anyhow::ensure!(status == 200, "{status} {health}");
    health["leader"].as_bool().context("no leader field")
}

/// Which of the replicas lead now.
async fn leaders(replicas: &[ControlPlane]) -> anyhow::Result<Vec<bool>> {
    let mut out = Vec::new();
    for cp in replicas {
        out.push(leads(cp).await?);
    }
    Ok(out)
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
    let first = ControlPlane::start_with(&store, &env).await?;
    wait_for(
        "the first replica to lead",
        Duration::from_secs(15),
        || async { leads(&first).await.ok().filter(|l| *l) },
    )
    .await
    .with_context(|| first.log_tail())?;
    let dir = tempfile::tempdir()?;
    share_replica_identity(&first.data_dir, &dir.path().join("data"))?;
    let second = ControlPlane::start_in(&store, &dir.path().join("data"), &env).await?;
    let mut replicas = [first, second];

    // A live client of the follower: it sees what the leader commits.
    let mut live = replicas[1].live_socket("kind=result&check=lone").await?;

    // A region with no agent: its check runs on the fallback executor of the leader only.
    replicas[0].enrollment_token("dark", 1).await?;
    let (status, body) = replicas[0]
        .post(
            "/api/v1/checks",
            json!({"id": "lone", "name": "lone", "interval_s": INTERVAL_S, "timeout_ms": 500,
                "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9}, "regions": ["dark"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let started = vantage_tests::now_ms();
    wait_for("two fallback results", Duration::from_secs(30), || async {
        let rows = fallback_results(&replicas[1], started).await.ok()?;
        (rows.len() >= 2).then_some(())
    })
    .await
    .with_context(|| replicas[0].log_tail())?;
    // The follower saw the same check and region (its plan has it on fallback too), yet ran
    // nothing: one result per interval reached the store, not two.
    assert_eq!(leaders(&replicas).await?, [true, false]);
    assert_eq!(replicas[1].counter("vantage_leader").await?, 0);
    assert_eq!(replicas[0].counter("vantage_leader").await?, 1);
    assert_eq!(replicas[1].counter("vantage_fallback_runs_total").await?, 0);
    let ran = replicas[0].counter("vantage_fallback_runs_total").await?;
    let rows = fallback_results(&replicas[1], started).await?;
    assert!(ran >= 2, "the leader ran {ran}");
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
        replicas[0]
            .counter("vantage_live_relay_events_total{direction=\"sent\"}")
            .await?
            >= 1
    );
    assert!(
        replicas[1]
            .counter("vantage_live_relay_events_total{direction=\"received\"}")
            .await?
            >= 1
    );

    // The leader's lease session is cut while its process lives (as a PostgreSQL restart or
    // a lost path would): PostgreSQL frees the lock at once, the leader learns it on its next
    // round trip, and whoever takes the lock waits until then. Sampled every 50 ms: never two
    // leaders, a while with none, then one. (`pg_locks` shows every database's locks: other
    // tests' replicas hold the same lock id in theirs.)
    let pool = replicas[0].store_pool().await?;
    let cut = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND granted AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((classid::bigint << 32) | objid::bigint) = {SCHEDULER_LOCK_ID}"
    )))
    .execute(&pool)
    .await?;
    assert_eq!(cut.rows_affected(), 1, "one session holds the lease");
    let (mut samples, mut leaderless) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = leaders(&replicas).await?;
        samples += 1;
        assert!(now != [true, true], "two replicas lead at once");
        if now == [false, false] {
            leaderless += 1;
        } else if leaderless > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no single leader 10 s after the cut ({samples} samples, {leaderless} leaderless)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("lease session cut: {leaderless} of {samples} samples leaderless, then one leader");

    // Kill -9 the leader: the other replica takes the lease and runs the check within one
    // interval of the kill.
    let leader = usize::from(leads(&replicas[1]).await?);
    let other = 1 - leader;
    replicas[leader].kill();
    let killed = Instant::now();
    let killed_ms = vantage_tests::now_ms();
    wait_for(
        "the other replica to lead",
        Duration::from_secs(15),
        || async { leads(&replicas[other]).await.ok().filter(|l| *l) },
    )
    .await
    .with_context(|| replicas[other].log_tail())?;
    let takeover = killed.elapsed();
    let first_after = wait_for(
        "a fallback result from the new leader",
        Duration::from_secs(20),
        || async {
            let rows = fallback_results(&replicas[other], killed_ms).await.ok()?;
            rows.first().and_then(|r| r["measured_at_ms"].as_i64())
        },
    )
    .await
    .with_context(|| replicas[other].log_tail())?;
    let last_before = fallback_results(&replicas[other], started)
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
    assert!(
        replicas[other]
            .counter("vantage_fallback_runs_total")
            .await?
            >= 1
    );
    assert_eq!(replicas[other].counter("vantage_leader").await?, 1);

    // Nothing stored twice: every fallback result has its own seq.
    let rows = fallback_results(&replicas[other], started).await?;
    let mut seqs: Vec<i64> = rows.iter().filter_map(|r| r["seq"].as_i64()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "duplicate seqs among {rows:?}");
    Ok(())
}

/// The state of `check` in the stored verdicts, as `cp` serves them.
async fn verdict_state(cp: &ControlPlane, check: &str) -> Option<String> {
    let (status, views) = cp.get("/api/v1/verdicts").await.ok()?;
    if status != 200 {
        return None;
    }
    views.as_array()?.iter().find(|v| v["check_id"] == check)?["state"]
        .as_str()
        .map(str::to_owned)
}

/// A check paused through a follower's API is paused by the leader's judge at once: the
/// follower's change reaches the leader through the live relay and wakes its assignment and
/// re-judging (without it the leader judged with the old policy until its next assignment
/// resync, up to 10 s, woke it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_paused_through_a_follower_is_paused_by_the_leader_at_once() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Postgres).await?;
    let env = [("VANTAGE_HEARTBEAT_INTERVAL_S", "1")];
    let leader = ControlPlane::start_with(&store, &env).await?;
    wait_for(
        "the first replica to lead",
        Duration::from_secs(15),
        || async { leads(&leader).await.ok().filter(|l| *l) },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    share_replica_identity(&leader.data_dir, &dir.path().join("data"))?;
    let follower = ControlPlane::start_in(&store, &dir.path().join("data"), &env).await?;
    let replicas = [leader, follower];
    assert_eq!(leaders(&replicas).await?, [true, false]);
    let [leader, follower] = &replicas;

    // A check in a region with no agent: the leader's fallback runs it (port 9: refused).
    leader.enrollment_token("dark", 1).await?;
    let definition = json!({"id": "lone", "name": "lone", "interval_s": 2, "timeout_ms": 500,
        "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9}, "regions": ["dark"]});
    let (status, body) = leader.post("/api/v1/checks", definition.clone()).await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    wait_for("the leader's verdict", Duration::from_secs(30), || async {
        let state = verdict_state(leader, "lone").await?;
        (state == "down").then_some(())
    })
    .await
    .with_context(|| leader.log_tail())?;

    let mut paused = definition;
    paused["enabled"] = json!(false);
    let (status, body) = follower.put("/api/v1/checks/lone", paused).await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    let changed = Instant::now();
    wait_for("paused by the leader", Duration::from_secs(3), || async {
        let state = verdict_state(leader, "lone").await?;
        (state == "paused").then_some(())
    })
    .await
    .with_context(|| leader.log_tail())?;
    eprintln!(
        "paused on the leader {:?} after the follower's change",
        changed.elapsed()
    );
    assert_eq!(
        follower
            .counter("vantage_verdict_transitions_total")
            .await?,
        0
    );
    Ok(())
}

/// A replica joining a store that another replica serves leaves that replica's agents as
/// they are: an agent online through the first stays online for both (the joining replica
/// used to mark every agent offline at start, until the agent's next heartbeat, and the
/// leader moved its checks away meanwhile). A replica starting alone still marks every
/// agent offline: after its crash nobody is connected until their hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_keeps_the_agents_of_the_others_online() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Postgres).await?;
    // Heartbeats every 60 s: an agent marked offline wrongly stays so through the test.
    let env = [("VANTAGE_HEARTBEAT_INTERVAL_S", "60")];
    let mut first = ControlPlane::start_with(&store, &env).await?;
    let token = first.enrollment_token("europe", 1).await?;
    let mut agent = Agent::start(&first, &token, "")?;
    let id = agent.wait_enrolled().await?;
    first
        .wait_agent_state(&id, "online", Duration::from_secs(20))
        .await
        .with_context(|| first.log_tail())?;

    let dir = tempfile::tempdir()?;
    share_replica_identity(&first.data_dir, &dir.path().join("data"))?;
    let mut second = ControlPlane::start_in(&store, &dir.path().join("data"), &env).await?;
    for _ in 0..3 {
        for cp in [&first, &second] {
            let view = cp.agent(&id).await?;
            assert_eq!(view["state"], "online", "{view}\n{}", second.log_tail());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        second
            .log_tail()
            .contains("Other replicas serve this store"),
        "{}",
        second.log_tail()
    );

    // Both replicas die with the agent's row online; the agent is gone when one comes back.
    second.kill();
    first.kill();
    agent.kill();
    assert_eq!(
        store_state(&store, &id).await?,
        "online",
        "the row was online when the replicas died"
    );
    first.spawn().await?;
    let view = first.agent(&id).await?;
    assert_eq!(view["state"], "offline", "{view}");
    Ok(())
}

/// Agent `id`'s state as stored, read with no replica running.
async fn store_state(store: &TestStore, id: &str) -> anyhow::Result<String> {
    let pool = sqlx::PgPool::connect(store.url.as_deref().context("a PostgreSQL store")?).await?;
    let state: String = sqlx::query_scalar("SELECT state FROM agents WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(state)
}
