//! Fleet load on one control plane: `--agents` simulated agents, each enrolled through the
//! real path (`POST /api/v1/enroll` with its own key and CSR, one multi-use token) and
//! connected over its own mutual-TLS MQTT session with its own client certificate, then a
//! steady mix per agent like the real agent's: `hello` and retained `online` on connect,
//! subscriptions to `config`, `cmd` and `results/ack` (at the agent's QoS), then, once the
//! control plane has answered the hello, every `--every` seconds a heartbeat (QoS 0), one host-metrics sample and a batch of `--results` check results (QoS 1,
//! one seq space, acknowledged by exact ranges).
//!
//! Prints:
//! - the enrollment rate;
//! - the login storm: every agent connecting at once (at most `--connect-concurrency`
//!   handshakes in flight from this one process), the time until the last CONNACK and the
//!   subscriptions are done, and the connect times' percentiles;
//! - every 5 s: the control plane's RSS and CPU, agents connected, rows acknowledged;
//! - the steady state: rows acknowledged per second, ack latency (publish → the ack covering
//!   the seq) p50 / p99 / max over every row, and the agents starved of acks (a seq still
//!   unacknowledged 30 s after the last publish).
//!
//! Usage: `bench-fleet [--agents 10000] [--backend sqlite|postgres] [--seconds 120]
//! [--every 10] [--results 2] [--connect-concurrency 200] [--broker embedded|cluster]`.
//! Raises its open-file limit to fit the agents (the control plane raises its own: one
//! descriptor per session).
//!
//! With `--broker cluster` the agents connect, in turn, to the MQTT ports of a 3-node
//! nats-server cluster (`VANTAGE_TEST_NATS_SERVER`; its config from `vantage broker-config`,
//! logins through the control plane's auth callout, ingest through the shared JetStream
//! stream): the scale-out path. The samples then add the nodes' RSS and CPU.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, Incoming, QoS};
use tokio::sync::Semaphore;
use vantage_mqtt::{
    AgentTopic, CheckResult, DiskUsage, Heartbeat, Hello, HostMetrics, MetricsBatch, NetUsage,
    NodeState, ResultsAck, ResultsBatch, Status, Timings, encode, topic,
};
use vantage_tests::nats::NatsCluster;
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore, proc_sample};

struct Args {
    agents: usize,
    backend: Backend,
    seconds: u64,
    every: u64,
    results: u64,
    connect_concurrency: usize,
    cluster: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 10_000,
        backend: Backend::Sqlite,
        seconds: 120,
        every: 10,
        results: 2,
        connect_concurrency: 200,
        cluster: false,
    };
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--agents" => args.agents = value.parse()?,
            "--backend" => args.backend = Backend::parse(&value)?,
            "--seconds" => args.seconds = value.parse()?,
            "--every" => args.every = value.parse::<u64>()?.max(1),
            "--results" => args.results = value.parse()?,
            "--connect-concurrency" => args.connect_concurrency = value.parse::<usize>()?.max(1),
            "--broker" => {
                args.cluster = match value.as_str() {
                    "embedded" => false,
                    "cluster" => true,
                    other => bail!("--broker embedded|cluster, not {other}"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// Counters every simulated agent adds to.
#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    rows_sent: AtomicU64,
    rows_acked: AtomicU64,
    reconnects: AtomicU64,
}

/// What one agent reports when it stops.
struct AgentReport {
    connect_ms: f64,
    /// Publish → ack, one entry per acknowledged row, in ms.
    ack_ms: Vec<f32>,
    unacked: usize,
}

/// Enrolls `n` identities through the API, 16 at a time.
async fn enroll_all(cp: &ControlPlane, n: usize) -> anyhow::Result<Vec<MqttIdentity>> {
    use futures_util::StreamExt;
    let token = cp.enrollment_token("fleet", u32::try_from(n)?).await?;
    let token = &token;
    futures_util::stream::iter(0..n)
        .map(
            |i| async move { MqttIdentity::enroll_with(cp, token, &format!("fleet-{i:05}")).await },
        )
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn metrics_sample(seq: u64, now_ms: i64) -> HostMetrics {
    HostMetrics {
        seq,
        measured_at_ms: now_ms,
        cpu_pct: 12.5,
        cores_pct: None,
        mem_total_bytes: 2 << 30,
        mem_used_bytes: 900 << 20,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        load1: 0.3,
        load5: 0.2,
        load15: 0.1,
        uptime_s: 86_400,
        disks: vec![DiskUsage {
            mount: "/".into(),
            total_bytes: 40 << 30,
            used_bytes: 11 << 30,
        }],
        nets: vec![NetUsage {
            iface: "eth0".into(),
            rx_bytes: 1 << 30,
            tx_bytes: 1 << 29,
            rx_bytes_per_s: 12_000.0,
            tx_bytes_per_s: 8_000.0,
        }],
    }
}

fn result_row(seq: u64, now_ms: i64, check: u64) -> CheckResult {
    CheckResult {
        seq,
        measured_at_ms: now_ms,
        check_id: format!("fleet-http-{check}"),
        ok: true,
        reason: "status 200".into(),
        timings: Timings {
            dns_ms: Some(0.05),
            connect_ms: Some(0.4),
            ttfb_ms: Some(1.2),
            total_ms: 1.8,
            ..Timings::default()
        },
        status_code: Some(200),
        values: BTreeMap::new(),
    }
}

/// One simulated agent: connects (within the storm's concurrency), subscribes, says hello,
/// then publishes its mix until `stop_at`, then waits up to 30 s for the last acks.
async fn run_agent(
    identity: MqttIdentity,
    args: Arc<Args>,
    storm: Arc<Semaphore>,
    totals: Arc<Totals>,
    stop_at: tokio::time::Instant,
) -> anyhow::Result<AgentReport> {
    let id = identity.agent_id.clone();
    let started = Instant::now();
    let permit = storm.acquire().await?;
    let mut options = identity.options(&id)?;
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // The CONNACK, retried like an agent does when the server is too busy to answer.
    let mut backoff = Duration::from_millis(500);
    loop {
        match vantage_tests::connect(&mut eventloop).await {
            Ok(()) => break,
            Err(_) if tokio::time::Instant::now() < stop_at => {
                totals.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
            Err(error) => bail!("agent {id} never connected: {error}"),
        }
    }
    // What the agent subscribes to, and at its QoS.
    for kind in vantage_agent::session::SUBSCRIPTIONS {
        client
            .subscribe(
                topic::agent(&id, kind),
                vantage_agent::session::SUBSCRIPTION_QOS,
            )
            .await?;
    }
    let mut subacks = 0;
    while subacks < 3 {
        let event = eventloop
            .poll()
            .await
            .with_context(|| format!("agent {id} lost its session while subscribing"))?;
        if let Event::Incoming(Incoming::SubAck(suback)) = event {
            anyhow::ensure!(
                suback
                    .return_codes
                    .iter()
                    .all(|code| !matches!(code, rumqttc::SubscribeReasonCode::Failure)),
                "{id}: the broker refused a subscription"
            );
            subacks += 1;
        }
    }
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    totals.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);

    let mut next_seq = 1u64;
    let hello = Hello {
        v: vantage_mqtt::PROTOCOL_VERSION,
        version: "bench".into(),
        arch: "x86_64".into(),
        os: "linux".into(),
        hostname: id.clone(),
        labels: BTreeMap::new(),
        capabilities: vec!["http".into(), "tcp".into(), "dns".into()],
        boot_id: hex::encode(rand::random::<[u8; 8]>()),
        next_seq,
        config_revision: 0,
    };
    let say_hello = || {
        client.try_publish(
            topic::agent(&id, AgentTopic::Hello),
            QoS::AtLeastOnce,
            false,
            encode(&hello),
        )
    };
    say_hello()?;
    let online = Status {
        v: vantage_mqtt::PROTOCOL_VERSION,
        state: NodeState::Online,
    };
    client.try_publish(
        topic::agent(&id, AgentTopic::Status),
        QoS::AtLeastOnce,
        true,
        encode(&online),
    )?;

    let ack_topic = topic::agent(&id, AgentTopic::ResultsAck);
    let mut pending: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut ack_ms = Vec::new();
    // Each agent's cycle starts at a random point of the first period, as real agents' do.
    let offset = Duration::from_millis(rand::random_range(0..args.every * 1000));
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + offset,
        Duration::from_secs(args.every),
    );
    // Like the agent, rows wait for the answer to the hello (a cycle missed meanwhile is
    // not made up).
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answered = false;
    // Unanswered, the hello is said again like the agent says it.
    let mut hello_again = tokio::time::interval_at(
        tokio::time::Instant::now() + vantage_agent::hellogate::HELLO_AGAIN,
        vantage_agent::hellogate::HELLO_AGAIN,
    );
    let drain_until = stop_at + Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = tick.tick(), if answered && tokio::time::Instant::now() < stop_at => {
                let now_ms = vantage_agent::now_ms();
                let heartbeat = Heartbeat {
                    v: vantage_mqtt::PROTOCOL_VERSION,
                    at_ms: now_ms,
                    uptime_s: started.elapsed().as_secs(),
                    spool_len: pending.len() as u64,
                    spool_dropped_total: 0,
                    spool_unsendable_total: 0,
                    spool_write_errors_total: 0,
                    next_seq,
                    config_revision: 0,
                };
                let _ = client.try_publish(topic::agent(&id, AgentTopic::Heartbeat), QoS::AtMostOnce, false, encode(&heartbeat));
                let metrics = MetricsBatch { v: vantage_mqtt::PROTOCOL_VERSION, items: vec![metrics_sample(next_seq, now_ms)] };
                pending.insert(next_seq, Instant::now());
                next_seq += 1;
                let items: Vec<CheckResult> = (0..args.results)
                    .map(|check| {
                        pending.insert(next_seq, Instant::now());
                        next_seq += 1;
                        result_row(next_seq - 1, now_ms, check)
                    })
                    .collect();
                let n = 1 + items.len() as u64;
                let results = ResultsBatch { v: vantage_mqtt::PROTOCOL_VERSION, items };
                client.publish(topic::agent(&id, AgentTopic::Metrics), QoS::AtLeastOnce, false, encode(&metrics)).await?;
                if args.results > 0 {
                    client.publish(topic::agent(&id, AgentTopic::Results), QoS::AtLeastOnce, false, encode(&results)).await?;
                }
                totals.rows_sent.fetch_add(n, Ordering::Relaxed);
            }
            _ = hello_again.tick(), if !answered && tokio::time::Instant::now() < stop_at => say_hello()?,
            () = tokio::time::sleep_until(stop_at), if pending.is_empty() => break,
            event = tokio::time::timeout_at(drain_until, eventloop.poll()) => {
                let Ok(event) = event else { break };
                match event {
                    Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == ack_topic => {
                        let ack: ResultsAck = vantage_mqtt::decode(&p.payload)?;
                        answered |= ack.hello == Some(hello.next_seq);
                        let now = Instant::now();
                        for (from, to) in ack.ranges {
                            let seqs: Vec<u64> = pending.range(from..=to).map(|(s, _)| *s).collect();
                            for seq in seqs {
                                if let Some(sent) = pending.remove(&seq) {
                                    ack_ms.push((now - sent).as_secs_f32() * 1000.0);
                                    totals.rows_acked.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        if tokio::time::Instant::now() >= stop_at && pending.is_empty() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => bail!("agent {id} lost its session: {error}"),
                }
            }
        }
    }
    let _ = client.try_disconnect();
    anyhow::ensure!(answered, "agent {id}: its hello was never answered");
    Ok(AgentReport {
        connect_ms,
        ack_ms,
        unacked: pending.len(),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Raises this process's open-file limit (one socket per simulated agent); the control
/// plane raises its own.
fn raise_open_files(agents: usize) -> anyhow::Result<()> {
    let files = vantage_control_plane::limits::raise_open_files(agents as u64 + 256)?;
    anyhow::ensure!(
        files.soft >= files.needed,
        "the open-file limit is {}, {agents} agents need about {} (raise ulimit -Hn)",
        files.soft,
        files.needed
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(parse_args()?);
    raise_open_files(args.agents)?;
    let store = TestStore::create(args.backend).await?;
    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().join("data");
    let max_connections = (args.agents + 1000).to_string();
    // The API's rate limit guards a control plane from a runaway client; enrolling a whole
    // fleet from one benchmark process is provisioning, not what is measured here.
    let mut env = vec![
        ("VANTAGE_MAX_CONNECTIONS", max_connections),
        ("VANTAGE_API_RATE_PER_S", "100000".to_owned()),
        ("VANTAGE_API_RATE_BURST", "100000".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let cluster = if args.cluster {
        let (cluster, cluster_env) =
            NatsCluster::for_control_plane(&data_dir, &temp.path().join("broker"), &[])?;
        env.extend(cluster_env);
        Some(cluster)
    } else {
        None
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cp = ControlPlane::start_in(&store, &data_dir, &env).await?;
    if cluster.is_some() {
        // Messages on a subject no stream holds yet reach nobody: wait for the stream.
        vantage_tests::wait_for(
            "the control plane reading the cluster",
            Duration::from_secs(60),
            || async {
                (cp.counter("vantage_broker_ingest_reading").await.ok()? == 1).then_some(())
            },
        )
        .await?;
    }
    let cp_pid = cp.pid().context("control plane pid")?;
    let node_pids = cluster.as_ref().map(NatsCluster::pids).unwrap_or_default();
    println!(
        "fleet agents={} backend={} broker={} every={} s results/batch={} seconds={} connect_concurrency={}",
        args.agents,
        args.backend.name(),
        if args.cluster { "cluster" } else { "embedded" },
        args.every,
        args.results,
        args.seconds,
        args.connect_concurrency
    );

    let started = Instant::now();
    let mut identities = enroll_all(&cp, args.agents).await?;
    if let Some(cluster) = &cluster {
        for (i, identity) in identities.iter_mut().enumerate() {
            identity.mqtt_port = cluster.nodes[i % cluster.nodes.len()].mqtt;
        }
    }
    let enroll_s = started.elapsed().as_secs_f64();
    println!(
        "fleet enrolled {} agents in {enroll_s:.1} s ({:.0}/s), control plane rss_mib={:.1}",
        identities.len(),
        identities.len() as f64 / enroll_s,
        proc_sample(cp_pid)?.rss_kib as f64 / 1024.0
    );

    // The sampler: the control plane's RSS and CPU over time.
    let totals = Arc::new(Totals::default());
    let sampler = {
        let totals = totals.clone();
        let node_pids = node_pids.clone();
        tokio::spawn(async move {
            let mut rows: Vec<(f64, f64)> = Vec::new();
            let begin = Instant::now();
            let nodes_ticks = || -> u64 {
                node_pids
                    .iter()
                    .filter_map(|pid| proc_sample(*pid).ok())
                    .map(|s| s.cpu_ticks)
                    .sum()
            };
            let mut last = (
                Instant::now(),
                proc_sample(cp_pid).ok()?.cpu_ticks,
                nodes_ticks(),
            );
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let sample = proc_sample(cp_pid).ok()?;
                let nodes_now = nodes_ticks();
                let seconds = last.0.elapsed().as_secs_f64();
                let cpu = (sample.cpu_ticks - last.1) as f64 / seconds;
                let nodes_cpu = nodes_now.saturating_sub(last.2) as f64 / seconds;
                last = (Instant::now(), sample.cpu_ticks, nodes_now);
                let rss = sample.rss_kib as f64 / 1024.0;
                rows.push((rss, cpu));
                let nodes = if node_pids.is_empty() {
                    String::new()
                } else {
                    let rss: u64 = node_pids
                        .iter()
                        .filter_map(|pid| proc_sample(*pid).ok())
                        .map(|s| s.rss_kib)
                        .sum();
                    format!(
                        " nodes_rss_mib={:.0} nodes_cpu_pct={nodes_cpu:.0}",
                        rss as f64 / 1024.0
                    )
                };
                println!(
                    "fleet t={:>4.0}s cp_rss_mib={rss:.0} cp_cpu_pct={cpu:.0}{nodes} connected={} rows_sent={} rows_acked={} reconnects={}",
                    begin.elapsed().as_secs_f64(),
                    totals.connected.load(Ordering::Relaxed),
                    totals.rows_sent.load(Ordering::Relaxed),
                    totals.rows_acked.load(Ordering::Relaxed),
                    totals.reconnects.load(Ordering::Relaxed),
                );
            }
            #[allow(unreachable_code)]
            Some(rows)
        })
    };

    // The login storm, then the steady mix until stop_at.
    let storm = Arc::new(Semaphore::new(args.connect_concurrency));
    let storm_started = Instant::now();
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(identities.len());
    for identity in identities {
        tasks.push(tokio::spawn(run_agent(
            identity,
            args.clone(),
            storm.clone(),
            totals.clone(),
            stop_at,
        )));
    }
    let all_connected = {
        let totals = totals.clone();
        let n = args.agents as u64;
        tokio::spawn(async move {
            while totals.connected.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            storm_started.elapsed()
        })
    };
    let storm_s = tokio::time::timeout(Duration::from_secs(args.seconds), all_connected)
        .await
        .map(|joined| joined.map(|d| d.as_secs_f64()));
    let acked_after_storm = totals.rows_acked.load(Ordering::Relaxed);
    let steady_from = Instant::now();
    tokio::time::sleep_until(stop_at).await;
    let acked_at_stop = totals.rows_acked.load(Ordering::Relaxed);
    let steady_s = steady_from.elapsed().as_secs_f64();

    let mut connect_ms = Vec::new();
    let mut ack_ms: Vec<f64> = Vec::new();
    let (mut failed, mut starved, mut unacked) = (0usize, 0usize, 0usize);
    for task in tasks {
        match task.await? {
            Ok(report) => {
                connect_ms.push(report.connect_ms);
                ack_ms.extend(report.ack_ms.iter().map(|&ms| f64::from(ms)));
                if report.unacked > 0 {
                    starved += 1;
                    unacked += report.unacked;
                }
            }
            Err(error) => {
                if failed < 5 {
                    eprintln!("fleet: {error:#}");
                }
                failed += 1;
            }
        }
    }
    sampler.abort();
    let end = proc_sample(cp_pid)?;
    connect_ms.sort_by(f64::total_cmp);
    ack_ms.sort_by(f64::total_cmp);
    match storm_s {
        Ok(Ok(seconds)) => println!(
            "fleet login storm: {} agents connected and subscribed in {seconds:.1} s ({:.0}/s); connect p50={:.0} ms p99={:.0} ms max={:.0} ms; reconnects={}",
            args.agents,
            args.agents as f64 / seconds,
            percentile(&connect_ms, 0.5),
            percentile(&connect_ms, 0.99),
            percentile(&connect_ms, 1.0),
            totals.reconnects.load(Ordering::Relaxed),
        ),
        _ => println!(
            "fleet login storm: only {} of {} agents connected within {} s",
            totals.connected.load(Ordering::Relaxed),
            args.agents,
            args.seconds
        ),
    }
    let acked = totals.rows_acked.load(Ordering::Relaxed);
    println!(
        "fleet steady: rows sent={} acked={} ({:.0} rows/s acknowledged from the storm's end to the stop, {:.0} offered); ack latency p50={:.1} ms p99={:.1} ms max={:.1} ms; agents failed={failed} starved={starved} (unacked rows {unacked})",
        totals.rows_sent.load(Ordering::Relaxed),
        acked,
        (acked_at_stop - acked_after_storm) as f64 / steady_s,
        args.agents as f64 * (1 + args.results) as f64 / args.every as f64,
        percentile(&ack_ms, 0.5),
        percentile(&ack_ms, 0.99),
        percentile(&ack_ms, 1.0),
    );
    println!(
        "fleet control plane at the end: rss_mib={:.0} (peak VmHWM {:.0})",
        end.rss_kib as f64 / 1024.0,
        vm_hwm_kib(cp_pid)? as f64 / 1024.0
    );
    // What ingest did with the rows: committed, held back for a rewound seq (simulated agents
    // never renumber), the hellos that found seqs already stored, and acks that failed or
    // did not fit the cluster publisher's queue.
    for line in [
        "vantage_ingest_rows_committed_total",
        "vantage_ingest_rows_held_total{reason=\"seq_rewound\"}",
        "vantage_ingest_seq_rewound_total",
        "vantage_ingest_ack_publish_failed_total",
        "vantage_broker_publish_dropped_total",
    ] {
        println!("fleet control plane {line} {}", cp.counter(line).await?);
    }
    for (index, pid) in node_pids.iter().enumerate() {
        println!(
            "fleet broker node n{index} at the end: rss_mib={:.0} (peak VmHWM {:.0})",
            proc_sample(*pid)?.rss_kib as f64 / 1024.0,
            vm_hwm_kib(*pid)? as f64 / 1024.0
        );
    }
    if let Some(cluster) = &cluster
        && (failed > 0 || starved > 0)
    {
        // What the nodes warned of: why a node closed a session.
        println!("fleet broker nodes' warnings and errors (last 40):");
        for line in cluster.warnings(40) {
            println!("  {line}");
        }
    }
    drop(cluster);
    if failed > 0 || starved > 0 {
        bail!("{failed} agents failed, {starved} starved of acks");
    }
    Ok(())
}

/// Peak resident memory of `pid` (`VmHWM`), in KiB.
fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")
}
