//! Verdict benchmark: assignment, judging and the notification outbox of a real control
//! plane, driven as a library inside this one process, on a real store (SQLite in a temp dir,
//! or a fresh PostgreSQL database) with its real embedded MQTT broker.
//!
//! 1. Assignment. `--agents` simulated agents (400) in `--regions` regions (4, the same
//!    number each) are enrolled through the store's enrollment path (one token per region)
//!    and marked online in the store; they hold no MQTT session. `--checks` TCP checks
//!    (10,000; 127.0.0.1:9 every 60 s, in every region, one agent per region) are created
//!    with `checks::create`, so the per-region config budget applies (a region holds what its
//!    enrolled agents hold together): when it refuses a check, the benchmark says so and
//!    goes on with the checks it accepted. The checks are
//!    created in a first control-plane instance whose assignment runs are held back (the
//!    benchmark holds the assignment lock), which is then stopped; a second instance on the
//!    same store, as after a restart, does the timed runs, so the first `reconcile` computes,
//!    stores and publishes every agent's config. Nothing wakes that instance's assignment
//!    worker (agents change state by direct store writes), so each timed run is the
//!    benchmark's own call. Then 10 % of each region's agents go offline and the next
//!    `reconcile` (the rebalance) is timed, and the (check, region) assignments that moved
//!    are counted against those the dropped agents held; then they come back, timed again.
//! 2. Outbox (before the verdicts, so that no incident of theirs queues anything to the
//!    channel). A webhook receiver on 127.0.0.1 (HTTP/1.1 with keep-alive, verifying every
//!    signature) answers 200 after `--delay-ms` (50); one webhook channel points at it.
//!    `--notifications` (2,000) notifications, one per incident, are queued with
//!    `queue_notification` (bodies are `IncidentView` JSON). They are queued with a due time
//!    a day ahead and then made due together by one `UPDATE`, so the sender, which also
//!    wakes on its own timer, cannot start while they are still being queued; then it is
//!    woken and timed until the receiver holds every one and the outbox shows every one
//!    delivered (the time is the last `delivered_at_ms`). The same again with a receiver
//!    that answers at once. The channel is deleted afterwards.
//! 3. Verdicts. Results go straight to `judge.observe` in batches of `--batch` (5,000, the
//!    ingest batch size), one result per (check, region) per pass, shuffled so that a batch
//!    spans thousands of checks, from the agent each (check, region) is assigned to. The
//!    warm-up pass (all ok) loads every check's track from the store and writes every
//!    check's first verdict (PENDING to UP); it is reported apart. Then `--passes` (16)
//!    steady passes with a mix: 1 % of the checks fail in every region for two passes out of
//!    four (DOWN, an incident, then UP), 2 % fail in one region the same way (DEGRADED), and
//!    0.5 % of the other results fail once (no transition). Last, the first region fails
//!    every check for two passes and recovers for two (a region cut off from its targets:
//!    every check goes DEGRADED and back), reported apart. The results are not committed to
//!    the store first: this measures the state machine with the verdict, transition and
//!    incident writes its transitions cause, not the commit (which `bench-ingest`
//!    measures), and the warm-up's replay on load finds no stored results. Each rate is
//!    compared with the committed ingest rate recorded in BENCHMARKS.md's ingest section
//!    (the first line for the store), or `--ingest-rows-per-s`; since ingest judges each
//!    batch right after committing it, in the same loop, the serial estimate of the two
//!    together is printed too.
//!
//! The simulated agents send no heartbeats, so the heartbeat interval is set to one hour:
//! neither the silent-agent sweep (three intervals without one) nor the fallback executor
//! (which starts three intervals after start) acts during the run.
//!
//! Usage: `bench-verdicts --backend sqlite|postgres [--agents 400] [--regions 4]
//! [--checks 10000] [--passes 16] [--batch 5000] [--notifications 2000] [--delay-ms 50]
//! [--ingest-rows-per-s N]`. PostgreSQL comes from `VANTAGE_TEST_PG_URL` (`scripts/bench`
//! starts one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use vantage_control_plane::AppState;
use vantage_control_plane::app::Application;
use vantage_control_plane::checks::{self, CheckDefinition, CheckError};
use vantage_control_plane::settings::{Secret, Settings};
use vantage_control_plane::store::{AgentRow, Labels, OutboxState, Store, now_ms};
use vantage_mqtt::{CheckResult, IncidentChange, NodeState};
use vantage_tests::receiver::{read_request, verify_signature};
use vantage_tests::{Backend, TestStore};

/// The webhook channel's id and signing secret.
const CHANNEL: &str = "bench-webhook";
const SECRET: &str = "bench-verdicts-webhook-secret";

struct Args {
    backend: Backend,
    agents: usize,
    regions: usize,
    checks: usize,
    passes: usize,
    batch: usize,
    notifications: usize,
    delay_ms: u64,
    ingest_rows_per_s: Option<f64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        backend: Backend::Sqlite,
        agents: 400,
        regions: 4,
        checks: 10_000,
        passes: 16,
        batch: 5000,
        notifications: 2000,
        delay_ms: 50,
        ingest_rows_per_s: None,
    };
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--backend" => args.backend = Backend::parse(&value)?,
            "--agents" => args.agents = value.parse()?,
            "--regions" => args.regions = value.parse()?,
            "--checks" => args.checks = value.parse()?,
            "--passes" => args.passes = value.parse()?,
            "--batch" => args.batch = value.parse()?,
            "--notifications" => args.notifications = value.parse()?,
            "--delay-ms" => args.delay_ms = value.parse()?,
            "--ingest-rows-per-s" => args.ingest_rows_per_s = Some(value.parse()?),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(
        args.regions > 0
            && args.agents >= args.regions * 10
            && args.agents.is_multiple_of(args.regions),
        "--agents must be a multiple of --regions with at least 10 agents per region"
    );
    anyhow::ensure!(
        args.batch > 0 && args.checks > 0,
        "--batch and --checks must be positive"
    );
    Ok(args)
}

fn region_names(n: usize) -> Vec<String> {
    let known = ["eu-west", "us-east", "ap-south", "sa-east"];
    (0..n)
        .map(|i| {
            known
                .get(i)
                .map_or_else(|| format!("region-{i}"), |r| (*r).to_owned())
        })
        .collect()
}

/// A stable pseudo-random number from a few integers (SplitMix64 over their mix).
fn mix(values: &[u64]) -> u64 {
    let mut hash: u64 = 0x9e37_79b9_7f4a_7c15;
    for value in values {
        hash ^= value.wrapping_add(0x9e37_79b9_7f4a_7c15);
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^= hash >> 31;
    }
    hash
}

fn settings_for(store: &TestStore, data_dir: &std::path::Path) -> Settings {
    let mut settings = Settings::ephemeral(data_dir.to_owned());
    settings.database_url = store.url.clone().map(Secret);
    // The simulated agents send no heartbeats (see the module docs).
    settings.heartbeat_interval_s = 3600;
    settings
}

/// Every (check, region) → agent assignment as stored.
async fn assignment_map(store: &Store) -> anyhow::Result<HashMap<(String, String), String>> {
    let mut map = HashMap::new();
    for row in store.list_assignments().await? {
        let previous = map.insert((row.check_id.clone(), row.region), row.agent_id);
        anyhow::ensure!(
            previous.is_none(),
            "check {} has two agents in one region",
            row.check_id
        );
    }
    Ok(map)
}

/// Each agent's config revision.
async fn revisions(store: &Store) -> anyhow::Result<HashMap<String, i64>> {
    Ok(store
        .list_agents(None)
        .await?
        .into_iter()
        .map(|a| (a.id, a.config_revision))
        .collect())
}

fn changed_configs(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> usize {
    after
        .iter()
        .filter(|(id, revision)| before.get(*id) != Some(*revision))
        .count()
}

/// Enrolls `per_region` agents in each region through enrollment tokens; returns their ids
/// per region.
async fn enroll_agents(
    state: &AppState,
    regions: &[String],
    per_region: usize,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut ids = Vec::new();
    for region in regions {
        let (_, secret) = state
            .store
            .create_enrollment_token(region, &BTreeMap::new(), per_region as i64, 3600)
            .await?;
        let mut in_region = Vec::new();
        for i in 0..per_region {
            let id = format!("ag-{region}-{i:03}");
            let enrolled = state
                .store
                .enroll_agent(&secret, |grant| AgentRow {
                    hostname: id.clone(),
                    arch: "x86_64".into(),
                    os: "linux".into(),
                    version: "bench".into(),
                    cert_serial: format!("{:016x}", mix(&[i as u64, region.len() as u64])),
                    cert_not_after_ms: now_ms() + 86_400_000,
                    ..AgentRow::enrolled(
                        id.clone(),
                        grant.region.clone(),
                        Labels(grant.labels.clone()),
                    )
                })
                .await?;
            let row =
                enrolled.map_err(|refusal| anyhow::anyhow!("enrollment refused: {refusal}"))?;
            in_region.push(row.id);
        }
        ids.push(in_region);
    }
    Ok(ids)
}

/// Creates up to `n` checks through `checks::create`; stops at the first the config budget
/// refuses. Returns the ids created and the refusal, if any.
async fn create_checks(
    state: &AppState,
    regions: &[String],
    n: usize,
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("ck-{i:05}");
        let body: CheckDefinition = serde_json::from_value(json!({
            "id": id, "name": format!("discard port {i}"),
            "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9},
            "interval_s": 60, "timeout_ms": 10_000, "regions": regions, "agents_per_region": 1
        }))?;
        match checks::create(state, body).await {
            Ok(_) => ids.push(id),
            Err(refusal @ CheckError::Oversize(_)) => {
                return Ok((ids, Some(refusal.to_string())));
            }
            Err(error) => return Err(error).with_context(|| format!("creating check {i}")),
        }
    }
    Ok((ids, None))
}

/// Marks `agents` with `node_state` in the store (no assignment worker is woken).
async fn set_state(
    state: &AppState,
    agents: &[String],
    node_state: NodeState,
) -> anyhow::Result<()> {
    for id in agents {
        anyhow::ensure!(
            state.store.set_agent_state(id, node_state).await?,
            "agent {id} is unknown"
        );
    }
    Ok(())
}

/// Times one `reconcile`.
async fn timed_reconcile(state: &AppState) -> anyhow::Result<Duration> {
    let started = Instant::now();
    vantage_control_plane::assign::reconcile(state).await?;
    Ok(started.elapsed())
}

/// The assignment part; returns the (check, region) → agent assignments at its end.
async fn bench_assignment(
    args: &Args,
    state: &AppState,
    agents: &[Vec<String>],
    n_checks: usize,
) -> anyhow::Result<HashMap<(String, String), String>> {
    let backend = args.backend.name();
    let all: Vec<String> = agents.iter().flatten().cloned().collect();
    set_state(state, &all, NodeState::Online).await?;
    anyhow::ensure!(
        state.store.desired_configs().await?.is_empty(),
        "configs were published before the first timed run"
    );

    // The first run computes, stores and publishes every assignment and every agent's config.
    let first = timed_reconcile(state).await?;
    let configs = state.store.desired_configs().await?;
    let max_config = configs
        .iter()
        .map(|c| c.config_json.len())
        .max()
        .unwrap_or(0);
    let initial = assignment_map(&state.store).await?;
    let n_assignments = n_checks * args.regions;
    anyhow::ensure!(
        initial.len() == n_assignments,
        "{} assignments stored, {n_assignments} expected",
        initial.len()
    );
    anyhow::ensure!(
        configs.len() == all.len(),
        "{} configs stored, one per agent ({}) expected",
        configs.len(),
        all.len()
    );
    let mut load: HashMap<&str, usize> = HashMap::new();
    for agent in initial.values() {
        *load.entry(agent.as_str()).or_default() += 1;
    }
    let (min_load, max_load) = (
        all.iter()
            .map(|a| load.get(a.as_str()).copied().unwrap_or(0))
            .min()
            .unwrap_or(0),
        load.values().copied().max().unwrap_or(0),
    );
    println!(
        "assign-first backend={backend} agents={} regions={} checks={n_checks} assignments={} configs_published={} max_config_bytes={max_config} checks_per_agent_min={min_load} checks_per_agent_max={max_load} seconds={:.3}",
        all.len(),
        args.regions,
        initial.len(),
        configs.len(),
        first.as_secs_f64()
    );

    // 10 % of each region's agents go offline: only their share may move.
    let per_region_drop = agents[0].len() / 10;
    let dropped: Vec<String> = agents
        .iter()
        .flat_map(|in_region| in_region.iter().take(per_region_drop).cloned())
        .collect();
    let dropped_set: HashSet<&str> = dropped.iter().map(String::as_str).collect();
    let expected = initial
        .values()
        .filter(|agent| dropped_set.contains(agent.as_str()))
        .count();
    let revisions_before = revisions(&state.store).await?;
    set_state(state, &dropped, NodeState::Offline).await?;
    let rebalance = timed_reconcile(state).await?;
    let after = assignment_map(&state.store).await?;
    let revisions_after = revisions(&state.store).await?;
    anyhow::ensure!(
        after.len() == n_assignments,
        "{} assignments after the rebalance, {n_assignments} expected",
        after.len()
    );
    let moved = initial
        .iter()
        .filter(|(key, agent)| after.get(*key) != Some(*agent))
        .count();
    let moved_from_online = initial
        .iter()
        .filter(|(key, agent)| {
            !dropped_set.contains(agent.as_str()) && after.get(*key) != Some(*agent)
        })
        .count();
    let to_dropped = after
        .values()
        .filter(|agent| dropped_set.contains(agent.as_str()))
        .count();
    println!(
        "assign-rebalance backend={backend} agents_offline={} moved_assignments={moved} expected_moved={expected} moved_from_online_agents={moved_from_online} still_on_offline_agents={to_dropped} configs_republished={} seconds={:.3}",
        dropped.len(),
        changed_configs(&revisions_before, &revisions_after),
        rebalance.as_secs_f64()
    );
    anyhow::ensure!(
        moved == expected && moved_from_online == 0 && to_dropped == 0,
        "the rebalance moved more than the dropped agents' share"
    );

    // They come back: each takes back exactly what it held.
    set_state(state, &dropped, NodeState::Online).await?;
    let back = timed_reconcile(state).await?;
    let restored = assignment_map(&state.store).await?;
    let revisions_back = revisions(&state.store).await?;
    let moved_back = after
        .iter()
        .filter(|(key, agent)| restored.get(*key) != Some(*agent))
        .count();
    let differ_from_initial = initial
        .iter()
        .filter(|(key, agent)| restored.get(*key) != Some(*agent))
        .count();
    println!(
        "assign-return backend={backend} agents_back={} moved_assignments={moved_back} expected_moved={expected} differ_from_first_run={differ_from_initial} configs_republished={} seconds={:.3}",
        dropped.len(),
        changed_configs(&revisions_after, &revisions_back),
        back.as_secs_f64()
    );
    anyhow::ensure!(
        moved_back == expected && differ_from_initial == 0,
        "the returning agents did not get exactly their share back"
    );
    Ok(restored)
}

/// What the webhook receiver saw.
#[derive(Default)]
struct Sink {
    delay: Duration,
    /// Idempotency keys starting with this are the run's own.
    prefix: String,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    connections: AtomicUsize,
    keys: std::sync::Mutex<HashSet<String>>,
    repeats: AtomicUsize,
    others: AtomicUsize,
    bad_signatures: AtomicUsize,
}

impl Sink {
    fn accepted(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A webhook receiver on 127.0.0.1 that answers 200 after the sink's delay; stops on drop.
struct SlowReceiver {
    port: u16,
    sink: Arc<Sink>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowReceiver {
    async fn start(delay: Duration, prefix: &str) -> anyhow::Result<SlowReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let sink = Arc::new(Sink {
            delay,
            prefix: prefix.to_owned(),
            ..Sink::default()
        });
        let shared = sink.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let sink = shared.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(stream, &sink).await;
                });
            }
        });
        Ok(SlowReceiver { port, sink, task })
    }
}

/// Serves HTTP/1.1 requests on one connection until the client closes it.
async fn serve_connection(mut stream: tokio::net::TcpStream, sink: &Sink) -> anyhow::Result<()> {
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(mut request) = read_request(&mut stream, &mut buffer).await? {
        request.status = 200;
        let now = sink.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        sink.peak.fetch_max(now, Ordering::SeqCst);
        if !sink.delay.is_zero() {
            tokio::time::sleep(sink.delay).await;
        }
        let close = request
            .headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if verify_signature(&request, SECRET, 300).is_err() {
            sink.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
        let key = request
            .headers
            .get("idempotency-key")
            .cloned()
            .unwrap_or_default();
        if key.starts_with(&sink.prefix) {
            let fresh = sink
                .keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
            if !fresh {
                sink.repeats.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            sink.others.fetch_add(1, Ordering::Relaxed);
        }
        sink.in_flight.fetch_sub(1, Ordering::SeqCst);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// Makes the run's pending notifications due now, in one statement.
async fn make_due(store: &Store, prefix: &str, at_ms: i64) -> anyhow::Result<u64> {
    let sql = "UPDATE outbox SET next_attempt_at_ms = $1, created_at_ms = $1 \
               WHERE state = 'pending' AND dedup_key LIKE $2";
    let pattern = format!("{prefix}%");
    Ok(match store {
        Store::Postgres(pool) => sqlx::query(sql)
            .bind(at_ms)
            .bind(&pattern)
            .execute(pool)
            .await?
            .rows_affected(),
        Store::Sqlite(pool) => sqlx::query(sql)
            .bind(at_ms)
            .bind(&pattern)
            .execute(pool)
            .await?
            .rows_affected(),
    })
}

/// One outbox run: `n` notifications to a receiver answering after `delay`.
async fn bench_outbox(
    args: &Args,
    state: &AppState,
    label: &str,
    delay: Duration,
) -> anyhow::Result<()> {
    let n = args.notifications;
    let prefix = format!("bench-{label}-");
    let receiver = SlowReceiver::start(delay, &prefix).await?;
    let definition: vantage_control_plane::notify::ChannelDefinition =
        serde_json::from_value(json!({
            "name": "benchmark receiver",
            "config": {"type": "webhook", "url": format!("http://127.0.0.1:{}/hook", receiver.port),
                "secret": SECRET},
        }))?;
    vantage_control_plane::notify::put_channel(state, Some(CHANNEL), definition).await?;

    let queue_started = Instant::now();
    let later = now_ms() + 86_400_000;
    for i in 0..n {
        let incident = format!("{prefix}{i:05}");
        let at = now_ms();
        let view: vantage_mqtt::IncidentView = serde_json::from_value(json!({
            "v": 1, "id": incident, "subject": "check", "subject_id": format!("ck-{i:05}"),
            "title": format!("discard port {i} is down"), "change": "opened",
            "text": "3 of 4 regions failing (quorum 3): eu-west: connection refused (2 in a row); us-east: connection refused (2 in a row); ap-south: connection refused (2 in a row)",
            "open": true, "dependent": false, "opened_at_ms": at, "resolved_at_ms": null,
            "acknowledged_at_ms": null, "at_ms": at
        }))?;
        let body = serde_json::to_string(&view)?;
        let queued = state
            .store
            .queue_notification(
                &format!("{incident}/1/{CHANNEL}"),
                &incident,
                CHANNEL,
                IncidentChange::Opened,
                &body,
                later,
            )
            .await?;
        anyhow::ensure!(queued, "notification {i} was not queued");
    }
    let queued_in = queue_started.elapsed();

    let start_ms = now_ms();
    let started = Instant::now();
    let made_due = make_due(&state.store, &prefix, start_ms).await?;
    anyhow::ensure!(made_due == n as u64, "{made_due} of {n} rows made due");
    state.notify_outbox.notify_one();
    let deadline = Duration::from_secs(600);
    while receiver.sink.accepted() < n {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "the receiver got {} of {n} notifications in {deadline:?}",
            receiver.sink.accepted()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received_in = started.elapsed();
    let delivered = loop {
        let rows: Vec<_> = state
            .store
            .list_outbox(Some(OutboxState::Delivered), 1_000_000)
            .await?
            .into_iter()
            .filter(|row| row.dedup_key.starts_with(&prefix))
            .collect();
        if rows.len() >= n {
            break rows;
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "the outbox shows {} of {n} delivered",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last_ms = delivered
        .iter()
        .filter_map(|row| row.delivered_at_ms)
        .max()
        .context("no delivery time")?;
    let retried = delivered.iter().filter(|row| row.attempts != 1).count();
    let dead = state
        .store
        .list_outbox(Some(OutboxState::Dead), 1_000_000)
        .await?
        .iter()
        .filter(|row| row.dedup_key.starts_with(&prefix))
        .count();
    let seconds = (last_ms - start_ms).max(1) as f64 / 1000.0;
    let sink = &receiver.sink;
    println!(
        "outbox backend={} receiver_delay_ms={} notifications={n} queued_s={:.2} received_all_s={:.2} delivered_all_s={seconds:.2} per_s={:.0} receiver_peak_concurrency={} receiver_connections={} retried={retried} dead={dead} repeats={} bad_signatures={} other_requests={}",
        args.backend.name(),
        delay.as_millis(),
        queued_in.as_secs_f64(),
        received_in.as_secs_f64(),
        n as f64 / seconds,
        sink.peak.load(Ordering::SeqCst),
        sink.connections.load(Ordering::Relaxed),
        sink.repeats.load(Ordering::Relaxed),
        sink.bad_signatures.load(Ordering::Relaxed),
        sink.others.load(Ordering::Relaxed),
    );
    anyhow::ensure!(
        retried == 0 && dead == 0 && sink.bad_signatures.load(Ordering::Relaxed) == 0,
        "deliveries failed or were retried"
    );
    Ok(())
}

/// What a pass of results holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// Every result ok: the warm-up.
    AllOk,
    /// The steady mix of the module docs; passes 1 and 2 of every four fail.
    Steady,
    /// Every check fails in the first region (a region cut off), or every result is ok
    /// again.
    RegionOutage { failing: bool },
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::AllOk => "warmup",
            Mix::Steady => "steady",
            Mix::RegionOutage { .. } => "region-outage",
        }
    }

    /// Whether the result of check `i` in region `r` in `pass` is ok.
    fn ok(self, i: usize, r: usize, pass: usize) -> bool {
        match self {
            Mix::AllOk => true,
            Mix::Steady => {
                let failing_phase = ((pass - 1) / 2).is_multiple_of(2);
                let outage = i.is_multiple_of(100);
                let regional = (i % 100 == 1 || i % 100 == 2) && r == 0;
                let flaky = mix(&[i as u64, r as u64, pass as u64]).is_multiple_of(200);
                !((failing_phase && (outage || regional)) || flaky)
            }
            Mix::RegionOutage { failing } => !(failing && r == 0),
        }
    }
}

/// Makes the passes of results: one per (check, region) each, from its assigned agent.
struct Feeder<'a> {
    template: CheckResult,
    checks: &'a [String],
    regions: &'a [String],
    assigned: &'a HashMap<(String, String), String>,
    /// The last seq of each agent.
    seqs: HashMap<String, u64>,
    /// Pass `n` is measured from `base_ms + n` minutes on.
    base_ms: i64,
}

impl Feeder<'_> {
    /// Pass number `pass` of `kind`, shuffled.
    fn pass(
        &mut self,
        pass: usize,
        kind: Mix,
    ) -> anyhow::Result<Vec<(String, String, CheckResult)>> {
        let (template, checks, regions, assigned, seqs, base_ms) = (
            &self.template,
            self.checks,
            self.regions,
            self.assigned,
            &mut self.seqs,
            self.base_ms,
        );
        let mut results = Vec::with_capacity(checks.len() * regions.len());
        for (i, check) in checks.iter().enumerate() {
            for (r, region) in regions.iter().enumerate() {
                let agent = assigned
                    .get(&(check.clone(), region.clone()))
                    .with_context(|| format!("{check} has no agent in {region}"))?;
                let seq = seqs.entry(agent.clone()).or_insert(0);
                *seq += 1;
                let ok = kind.ok(i, r, pass);
                let mut result = template.clone();
                result.seq = *seq;
                result.measured_at_ms =
                    base_ms + pass as i64 * 60_000 + (mix(&[i as u64, r as u64]) % 50_000) as i64;
                result.check_id = check.clone();
                result.ok = ok;
                if !ok {
                    result.reason = "connection refused".into();
                    result.timings.connect_ms = None;
                    result.timings.total_ms = 0.12;
                }
                results.push((agent.clone(), region.clone(), result));
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(pass as u64);
        results.shuffle(&mut rng);
        Ok(results)
    }
}

/// The committed ingest rate recorded for `store` (`PostgreSQL`, `SQLite`) in the ingest
/// section of BENCHMARKS.md: the first line of its table for that store, with its date.
fn recorded_ingest(store: &str) -> Option<(f64, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
    let text = std::fs::read_to_string(path).ok()?;
    let section = text.split("\n## ").find(|s| s.starts_with("Ingest"))?;
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .find_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.get(2) != Some(&store) {
                return None;
            }
            let rate = cells.get(5)?.replace(',', "").parse().ok()?;
            // The date cell may carry a note after the date; the date names the line.
            let date = cells.get(1)?.split_whitespace().next()?.to_owned();
            Some((rate, date))
        })
}

/// Results, time and transitions of some passes.
#[derive(Default)]
struct Tally {
    results: usize,
    batches: usize,
    time: Duration,
    transitions: u64,
}

impl Tally {
    fn per_s(&self) -> f64 {
        self.results as f64 / self.time.as_secs_f64().max(1e-9)
    }

    fn ms_per_batch(&self) -> f64 {
        self.time.as_secs_f64() * 1000.0 / self.batches.max(1) as f64
    }
}

/// The verdict part.
async fn bench_verdicts(
    args: &Args,
    state: &AppState,
    checks: &[String],
    regions: &[String],
    assigned: &HashMap<(String, String), String>,
) -> anyhow::Result<()> {
    let backend = args.backend.name();
    let template: CheckResult = serde_json::from_value(json!({
        "seq": 0, "measured_at_ms": 0, "check_id": "", "ok": true, "reason": "connected",
        "timings": {"connect_ms": 0.21, "total_ms": 0.24}
    }))?;
    // The warm-up comes first, then the steady passes, then a region cut off for two passes
    // and back for two.
    let mut plan = vec![Mix::AllOk];
    plan.extend(std::iter::repeat_n(Mix::Steady, args.passes));
    plan.extend([
        Mix::RegionOutage { failing: true },
        Mix::RegionOutage { failing: true },
        Mix::RegionOutage { failing: false },
        Mix::RegionOutage { failing: false },
    ]);
    let mut feeder = Feeder {
        template,
        checks,
        regions,
        assigned,
        seqs: HashMap::new(),
        base_ms: now_ms() - (plan.len() as i64 + 1) * 60_000,
    };
    let transitions = || state.counters.verdict_transitions.load(Ordering::Relaxed);
    let mut tallies: HashMap<&'static str, Tally> = HashMap::new();
    for (pass, kind) in plan.iter().copied().enumerate() {
        let results = feeder.pass(pass, kind)?;
        let before = transitions();
        let mut spent = Duration::ZERO;
        let mut n_batches = 0;
        for batch in results.chunks(args.batch) {
            let started = Instant::now();
            state.judge.observe(state, batch).await;
            spent += started.elapsed();
            n_batches += 1;
        }
        let changed = transitions() - before;
        let failed = results.iter().filter(|(_, _, r)| !r.ok).count();
        println!(
            "verdicts-pass backend={backend} pass={pass} kind={} results={} failed_results={failed} batches={n_batches} transitions={changed} seconds={:.3} results_per_s={:.0}",
            kind.name(),
            results.len(),
            spent.as_secs_f64(),
            results.len() as f64 / spent.as_secs_f64()
        );
        if kind == Mix::AllOk {
            anyhow::ensure!(
                changed as usize == checks.len(),
                "the warm-up should take every check from PENDING to UP: {changed} transitions for {} checks",
                checks.len()
            );
        }
        // The steady passes are also split into quiet ones and those where the outages
        // start or end (transitions of 1 % of the checks or more).
        let mut names = vec![kind.name()];
        if kind == Mix::Steady {
            names.push(if (changed as usize) * 100 < checks.len() {
                "steady-quiet"
            } else {
                "steady-transitions"
            });
        }
        for name in names {
            let tally = tallies.entry(name).or_default();
            tally.results += results.len();
            tally.batches += n_batches;
            tally.time += spent;
            tally.transitions += changed;
        }
    }
    let states = state.judge.states().await;
    anyhow::ensure!(
        states.len() == checks.len(),
        "{} of {} checks judged",
        states.len(),
        checks.len()
    );
    let open = state.store.list_incidents(true, 1_000_000).await?.len();
    let store_name = match args.backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    };
    let ingest = match args.ingest_rows_per_s {
        Some(rate) => Some((rate, "--ingest-rows-per-s".to_owned())),
        None => recorded_ingest(store_name).map(|(rate, date)| {
            (
                rate,
                format!("BENCHMARKS.md ingest table, first {store_name} line ({date})"),
            )
        }),
    };
    if let Some((ingest_rate, source)) = &ingest {
        println!(
            "verdicts-ingest backend={backend} ingest_rows_per_s={ingest_rate:.0} source=\"{source}\""
        );
    }
    for kind in [
        "warmup",
        "steady",
        "steady-quiet",
        "steady-transitions",
        "region-outage",
    ] {
        let Some(tally) = tallies.get(kind) else {
            continue;
        };
        let rate = tally.per_s();
        // Ingest judges each batch right after committing it, in the same loop, so the two
        // times add up: the serial estimate is what ingest would do with this judging.
        let comparison = match &ingest {
            Some((ingest_rate, _)) => format!(
                " judging_over_ingest={:.2} goal_judging_ge_ingest={} serial_ingest_and_judging_rows_per_s={:.0}",
                rate / ingest_rate,
                if rate >= *ingest_rate {
                    "met"
                } else {
                    "NOT_MET"
                },
                1.0 / (1.0 / ingest_rate + 1.0 / rate)
            ),
            None => String::new(),
        };
        println!(
            "verdicts backend={backend} kind={kind} checks={} batch={} results={} transitions={} seconds={:.3} ms_per_batch={:.1} results_per_s={rate:.0}{comparison}",
            checks.len(),
            args.batch,
            tally.results,
            tally.transitions,
            tally.time.as_secs_f64(),
            tally.ms_per_batch()
        );
    }
    println!("verdicts-end backend={backend} open_incidents={open}");
    anyhow::ensure!(
        args.passes < 2 || tallies.get("steady").is_some_and(|t| t.transitions > 0),
        "the steady passes caused no transition"
    );
    anyhow::ensure!(
        tallies
            .get("region-outage")
            .is_some_and(|t| t.transitions as usize * 100 >= 2 * checks.len() * 95),
        "the region outage should take every check to DEGRADED and back"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let backend = args.backend.name();
    let store = TestStore::create(args.backend).await?;
    let data_dir = tempfile::tempdir()?;
    let regions = region_names(args.regions);
    let per_region = args.agents / args.regions;

    // The first instance enrolls the agents and creates the checks, with its assignment runs
    // held back.
    let setup_started = Instant::now();
    let first = Application::build(settings_for(&store, data_dir.path())).await?;
    let state = first.state().clone();
    let assign_lock = state.assign_lock.clone();
    let held = assign_lock.lock().await;
    let agents = enroll_agents(&state, &regions, per_region).await?;
    let (check_ids, refusal) = create_checks(&state, &regions, args.checks).await?;
    let created_in = setup_started.elapsed();
    match &refusal {
        Some(reason) => println!(
            "assign-setup backend={backend} checks_wanted={} checks_created={} config_budget=REFUSED refusal=\"{reason}\" setup_s={:.1}",
            args.checks,
            check_ids.len(),
            created_in.as_secs_f64()
        ),
        None => println!(
            "assign-setup backend={backend} checks_wanted={} checks_created={} config_budget=ok setup_s={:.1}",
            args.checks,
            check_ids.len(),
            created_in.as_secs_f64()
        ),
    }
    anyhow::ensure!(!check_ids.is_empty(), "no check was accepted");
    first.run_until(std::future::ready(())).await;
    drop(held);
    drop(state);

    // The second instance, as after a restart, does every timed run.
    let app = Application::build(settings_for(&store, data_dir.path())).await?;
    let state = app.state().clone();
    let assigned = bench_assignment(&args, &state, &agents, check_ids.len()).await?;

    // The outbox runs before the verdicts, so that no incident of theirs queues anything to
    // the channel.
    bench_outbox(&args, &state, "slow", Duration::from_millis(args.delay_ms)).await?;
    bench_outbox(&args, &state, "fast", Duration::ZERO).await?;
    vantage_control_plane::notify::delete_channel(&state, CHANNEL).await?;

    bench_verdicts(&args, &state, &check_ids, &regions, &assigned).await?;
    app.run_until(std::future::ready(())).await;
    Ok(())
}
