//! Faults an agent lives through, each ending with every seq from 1 to the highest stored
//! exactly once and every row measured during the fault stored with its own measurement
//! time: PostgreSQL stopped at once mid-ingest, a half-open path, the control plane stalled,
//! the agent's wall clock jumping, and the agent's link cut. (The control plane killed -9, a
//! full state dir and a rewound one are in `resilience.rs` and `durability.rs`.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use vantage_tests::regions::{Forward, Region};
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, bin, wait_for};

use crate::resilience::stored_seqs;

/// A TCP target that accepts every connection, and `n` checks of it every second in
/// `region`: with metrics every second an agent then measures `n + 1` rows a second.
pub(crate) async fn checks_every_second(
    cp: &ControlPlane,
    region: &str,
    n: usize,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    for i in 0..n {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("tcp-{i}"), "name": "tcp", "interval_s": 1,
                    "timeout_ms": 500, "regions": [region],
                    "kind": {"type": "tcp", "host": "127.0.0.1", "port": target.port()}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    Ok(target)
}

/// Enrolls an agent (metrics every second) started by `command` and waits for its results.
async fn agent_measuring(
    cp: &ControlPlane,
    region: &str,
    command: Vec<PathBuf>,
) -> anyhow::Result<(Agent, String)> {
    let token = cp.enrollment_token(region, 1).await?;
    let agent = Agent::start_command(cp, &token, "metrics_interval_s = 1", command)?;
    let id = agent.wait_enrolled().await?;
    wait_for("results flowing", Duration::from_secs(30), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        (rows.as_array()?.len() >= 4).then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    Ok((agent, id))
}

/// A region whose agent reaches the control plane's API and MQTT ports and `target` only
/// through forwards; the MQTT one is returned to be cut.
struct Reachable {
    region: Region,
    mqtt: Forward,
    _others: [Forward; 2],
}

fn region_reaching(cp: &ControlPlane, target: SocketAddr) -> anyhow::Result<Reachable> {
    let region = Region::new()?;
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let api = region.forward(cp.http_port, local(cp.http_port))?;
    let mqtt = region.forward(cp.mqtt_port, local(cp.mqtt_port))?;
    let target = region.forward(target.port(), target)?;
    Ok(Reachable {
        region,
        mqtt,
        _others: [api, target],
    })
}

/// Results and metrics rows of `agent` measured inside `(from_ms, to_ms)`, half a second in
/// from each end.
async fn rows_measured_inside(
    pool: &sqlx::AnyPool,
    agent: &str,
    from_ms: i64,
    to_ms: i64,
) -> Option<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM results WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3) \
         + (SELECT COUNT(*) FROM host_metrics WHERE agent_id = $1 AND measured_at_ms > $2 AND measured_at_ms < $3)",
    )
    .bind(agent)
    .bind(from_ms + 500)
    .bind(to_ms - 500)
    .fetch_one(pool)
    .await
    .ok()?;
    Some(n)
}

/// Waits until at least `at_least` rows measured inside the window are stored; returns how
/// long after `ended_ms` they were all there, or fails with `log`.
pub(crate) async fn drained(
    pool: &sqlx::AnyPool,
    agent: &str,
    (from_ms, to_ms): (i64, i64),
    at_least: i64,
    log: impl Fn() -> String,
) -> anyhow::Result<i64> {
    let stored = wait_for(
        "the rows measured during the fault",
        Duration::from_secs(120),
        || async {
            rows_measured_inside(pool, agent, from_ms, to_ms)
                .await
                .filter(|n| *n >= at_least)
        },
    )
    .await;
    if stored.is_err() {
        anyhow::bail!(
            "{:?} of {at_least} rows measured during the fault stored\n{}",
            rows_measured_inside(pool, agent, from_ms, to_ms).await,
            log()
        );
    }
    Ok(vantage_agent::now_ms() - to_ms)
}

/// Every seq from 1 to the highest stored is there once (stored_seqs fails on a doubled
/// one); returns the highest.
pub(crate) async fn every_seq_once(pool: &sqlx::AnyPool, agent: &str) -> anyhow::Result<i64> {
    // Late acks and resends settle first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seqs = stored_seqs(pool, agent).await?;
    let max = *seqs.iter().next_back().context("no rows")?;
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    anyhow::ensure!(missing.is_empty(), "lost seqs: {missing:?}");
    Ok(max)
}

/// The agent noticed a dead connection and made a new one.
pub(crate) fn reconnected(agent: &Agent) -> anyhow::Result<()> {
    let log = agent.log();
    anyhow::ensure!(
        log.contains("Disconnected") && log.matches("Connected").count() >= 2,
        "the agent did not notice the dead connection and reconnect:\n{log}"
    );
    Ok(())
}

/// PostgreSQL stopped at once mid-ingest (as a crash: connections cut mid-transaction), down
/// for 15 s while the agent keeps measuring, then started again (it replays its WAL). A
/// commit waits up to the pool's 10 s for a connection, so some fail and are counted; the
/// control plane stays up, acknowledges nothing it did not commit, and takes the agent's
/// resends once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_ingest_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let pg = vantage_tests::postgres::PrivatePostgres::start()?;
    let store = TestStore {
        backend: Backend::Postgres,
        url: Some(pg.url()),
    };
    let mut cp = ControlPlane::start(&store).await?;
    checks_every_second(&cp, "asia", 4).await?;
    let (agent, id) = agent_measuring(&cp, "asia", vec![bin("vantage-agent")]).await?;
    let errors_before = cp.counter("vantage_ingest_commit_errors_total").await?;

    pg.stop_immediately()?;
    let down_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(cp.is_running(), "the control plane died with its store");
    pg.start_again()?;
    let up_at = vantage_agent::now_ms();

    // About 5 rows a second of the outage.
    let pool = cp.store_pool().await?;
    drained(&pool, &id, (down_at, up_at), 60, || {
        format!("{}\n{}", cp.log_tail(), agent.log())
    })
    .await?;
    let errors = cp.counter("vantage_ingest_commit_errors_total").await? - errors_before;
    assert!(
        errors > 0,
        "no failed commit was counted while the store was down"
    );
    let max = every_seq_once(&pool, &id).await?;
    println!(
        "PostgreSQL down {} ms: {errors} failed commits, {max} seqs stored once each, {:?} rows measured during the outage",
        up_at - down_at,
        rows_measured_inside(&pool, &id, down_at, up_at).await
    );
    assert!(cp.is_running());
    Ok(())
}

/// The agent's path to the control plane goes half-open for 30 s: nftables inside its network
/// namespace drops every packet of the MQTT connection, silently (no reset, no close), and
/// the SYNs of its reconnects. The agent notices through its keep-alive, keeps measuring into
/// its spool, and once packets pass again reconnects and drains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_path_is_noticed_and_loses_nothing() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let target = checks_every_second(&cp, "r1", 2).await?;
    let reachable = region_reaching(&cp, target)?;
    let (agent, id) =
        agent_measuring(&cp, "r1", reachable.region.command(&bin("vantage-agent"))).await?;

    let hole = reachable.region.black_hole(cp.mqtt_port)?;
    let hole_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(hole);
    let open_at = vantage_agent::now_ms();

    // About 3 rows a second were measured inside the hole.
    let pool = cp.store_pool().await?;
    let after = drained(&pool, &id, (hole_at, open_at), 75, || agent.log()).await?;
    reconnected(&agent)?;
    let max = every_seq_once(&pool, &id).await?;
    println!(
        "half-open for {} ms: {:?} rows measured inside it, stored {after} ms after packets \
         passed again; {max} seqs stored once each",
        open_at - hole_at,
        rows_measured_inside(&pool, &id, hole_at, open_at).await
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
/// reconnects and drains.
async fn a_stalled_control_plane_loses_nothing(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    checks_every_second(&cp, "asia", 2).await?;
    let (agent, id) = agent_measuring(&cp, "asia", vec![bin("vantage-agent")]).await?;

    let pid = cp.pid().context("control plane pid")?;
    signal(pid, "-STOP")?;
    let stalled_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(30)).await;
    signal(pid, "-CONT")?;
    let resumed_at = vantage_agent::now_ms();

    let pool = cp.store_pool().await?;
    let after = drained(&pool, &id, (stalled_at, resumed_at), 75, || {
        format!("{}\n{}", cp.log_tail(), agent.log())
    })
    .await?;
    reconnected(&agent)?;
    let max = every_seq_once(&pool, &id).await?;
    println!(
        "stalled for {} ms: {:?} rows measured during it, stored {after} ms after it resumed; \
         {max} seqs stored once each",
        resumed_at - stalled_at,
        rows_measured_inside(&pool, &id, stalled_at, resumed_at).await
    );
    assert!(cp.is_running());
    let (status, _) = cp.get("/healthz").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// Debian's libfaketime (package faketime), for a process whose wall clock the test sets.
fn libfaketime() -> anyhow::Result<PathBuf> {
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
    checks_every_second(&cp, "asia", 2).await?;
    let clock = tempfile::NamedTempFile::new()?;
    std::fs::write(clock.path(), "+0\n")?;
    let command = vec![
        PathBuf::from("env"),
        format!("LD_PRELOAD={}", libfaketime()?.display()).into(),
        format!("FAKETIME_TIMESTAMP_FILE={}", clock.path().display()).into(),
        "FAKETIME_NO_CACHE=1".into(),
        "DONT_FAKE_MONOTONIC=1".into(),
        bin("vantage-agent"),
    ];
    let (agent, id) = agent_measuring(&cp, "asia", command).await?;

    std::fs::write(clock.path(), "-2h\n")?;
    let back_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    std::fs::write(clock.path(), "+1d\n")?;
    let forward_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    std::fs::write(clock.path(), "+0\n")?;
    let true_at = vantage_agent::now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Rows measured in each window, by the time the agent's clock showed: two checks and
    // metrics each second, 9 s of each window counted.
    let pool = cp.store_pool().await?;
    let back = (back_at - BACK_MS, forward_at - BACK_MS);
    let forward = (forward_at + FORWARD_MS, true_at + FORWARD_MS);
    let windows = wait_for(
        "the rows of both jumps",
        Duration::from_secs(30),
        || async {
            let back = rows_measured_inside(&pool, &id, back.0, back.1).await?;
            let forward = rows_measured_inside(&pool, &id, forward.0, forward.1).await?;
            (back >= 21 && forward >= 21).then_some((back, forward))
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
            let now = vantage_agent::now_ms();
            (rows_measured_inside(&pool, &id, true_at, now).await? >= 6).then_some(())
        },
    )
    .await?;
    let max = every_seq_once(&pool, &id).await?;
    println!(
        "clock 2 h back, then 1 d forward: rows measured in the two windows {windows:?}; \
         {max} seqs stored once each"
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
/// the path is back, the agent reconnects within its backoff (at most 30 s) and drains its
/// spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_nothing() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let target = checks_every_second(&cp, "r1", 4).await?;
    let reachable = region_reaching(&cp, target)?;
    let (agent, id) =
        agent_measuring(&cp, "r1", reachable.region.command(&bin("vantage-agent"))).await?;

    let cut = link_cut();
    reachable.mqtt.cut();
    let cut_at = vantage_agent::now_ms();
    tokio::time::sleep(cut).await;
    reachable.mqtt.restore()?;
    let restored_at = vantage_agent::now_ms();

    // 5 rows a second were measured during the cut; nine tenths of them is the floor.
    let expected = (cut.as_secs() * 5 * 9 / 10) as i64;
    let pool = cp.store_pool().await?;
    let after = drained(&pool, &id, (cut_at, restored_at), expected, || agent.log()).await?;
    let max = every_seq_once(&pool, &id).await?;
    println!(
        "link cut for {} ms: {:?} rows measured during it, stored {after} ms after the link \
         was back; {max} seqs stored once each",
        restored_at - cut_at,
        rows_measured_inside(&pool, &id, cut_at, restored_at).await
    );
    assert!(cp.is_running());
    Ok(())
}
