//! Ingest benchmark: results per second committed end to end — simulated agents publishing
//! result batches over mutual-TLS MQTT through the front door, the broker, ingest and the
//! store, until each agent's last seq is acknowledged — beside PostgreSQL `COPY` of the same
//! rows in the same run.
//!
//! Usage: `bench-ingest --backend sqlite|postgres [--agents N] [--rows-per-agent N]
//! [--batch N] [--cp-batch-rows N] [--judged-checks N] [--flip-every N]
//! [--heartbeat-every N] [--window N] [--broker embedded|cluster]`. PostgreSQL comes
//! from `VANTAGE_TEST_PG_URL` (`scripts/bench` starts one); the COPY baseline always runs
//! there, with `psql \copy`.
//!
//! By default the rows name a check that does not exist, so nothing is judged. With
//! `--judged-checks N` the benchmark first creates N checks in the agents' region through the
//! API (before the agents connect; see `main`), and row `seq` names
//! check `seq % N`: every row is judged. With `--flip-every F` the rows of seq in
//! [F, 2F), [3F, 4F), … fail, so every check goes DOWN and back UP again and again, with an
//! incident each time: the worst burst of transitions the judging task can meet. The line then
//! also says when judging caught up (the checks-judged counter stopped moving) and how many
//! committed batches had to wait because the judging queue was full.
//!
//! The result messages are encoded before the clock starts (as a fleet's agents encode theirs on
//! their own machines); heartbeats are encoded as they are sent. Each agent keeps at most
//! `--window` result messages unacknowledged (default 20, 2,000 rows; 0: no bound): without
//! a bound the agents publish faster than ingest commits, and past about 200,000 rows in
//! flight the broker's ingest log (64 MiB of what ingest has not read) skips messages, which
//! real agents resend after 30 s and these do not.
//!
//! Heartbeats are in the mix: each agent publishes one heartbeat after every
//! `--heartbeat-every` result messages (default 1: a heartbeat per 100 rows; 0: none), as a
//! fleet's agents interleave them with their results.
//!
//! With `--broker cluster` the agents connect, in turn, to the MQTT ports of a 3-node
//! nats-server cluster (`VANTAGE_TEST_NATS_SERVER`, which `scripts/lib/nats.sh` installs)
//! authorized by the control plane's auth callout; the control plane reads their messages off
//! the cluster's JetStream ingest stream and publishes the acks to them there: the path of a
//! deployment with replicas (one replica here).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, Incoming, QoS};
use serde_json::json;
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore, connect};

struct Args {
    backend: Backend,
    agents: usize,
    rows_per_agent: u64,
    batch: u64,
    cp_batch_rows: usize,
    judged_checks: u64,
    flip_every: u64,
    heartbeat_every: u64,
    window: u64,
    cluster: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        backend: Backend::Sqlite,
        agents: 50,
        rows_per_agent: 4000,
        batch: 100,
        cp_batch_rows: 5000,
        judged_checks: 0,
        flip_every: 0,
        heartbeat_every: 1,
        window: 20,
        cluster: false,
    };
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--backend" => args.backend = Backend::parse(&value)?,
            "--agents" => args.agents = value.parse()?,
            "--rows-per-agent" => args.rows_per_agent = value.parse()?,
            "--batch" => args.batch = value.parse()?,
            "--cp-batch-rows" => args.cp_batch_rows = value.parse()?,
            "--judged-checks" => args.judged_checks = value.parse()?,
            "--flip-every" => args.flip_every = value.parse()?,
            "--heartbeat-every" => args.heartbeat_every = value.parse()?,
            "--window" => args.window = value.parse()?,
            "--broker" => {
                args.cluster = match value.as_str() {
                    "embedded" => false,
                    "cluster" => true,
                    other => anyhow::bail!("--broker embedded|cluster, not {other}"),
                }
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// What the rows name and how they fail (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Mix {
    judged_checks: u64,
    flip_every: u64,
    /// Measurement time of seq 0: an hour before the run, so rows land in the day
    /// partitions a control plane makes (as live rows do), not in the default one.
    start_ms: i64,
}

fn result_item(mix: Mix, seq: u64) -> vantage_mqtt::CheckResult {
    let (check_id, ok) = if mix.judged_checks == 0 {
        ("bench-http".to_owned(), !seq.is_multiple_of(17))
    } else {
        let failing = mix.flip_every > 0 && (seq / mix.flip_every) % 2 == 1;
        (format!("ck-{:05}", seq % mix.judged_checks), !failing)
    };
    vantage_mqtt::CheckResult {
        seq,
        measured_at_ms: mix.start_ms + seq as i64,
        check_id,
        ok,
        reason: if ok { "status 200" } else { "status 503" }.to_owned(),
        timings: vantage_mqtt::Timings {
            dns_ms: Some(0.05),
            connect_ms: Some(0.4),
            tls_ms: None,
            ttfb_ms: Some(1.2),
            transfer_ms: Some(0.1),
            total_ms: 1.8,
        },
        status_code: Some(if ok { 200 } else { 503 }),
        values: BTreeMap::new(),
    }
}

/// One agent's result messages, encoded by the wire crate as the agent encodes them: made
/// before the clock starts, as the agents of a fleet make theirs on their own machines (and
/// as the COPY baseline's rows are made before its clock).
fn result_messages(mix: Mix, rows: u64, batch: u64) -> Vec<(u64, Vec<u8>)> {
    let mut messages = Vec::new();
    let mut seq = 1;
    while seq <= rows {
        let items: Vec<_> = (seq..(seq + batch).min(rows + 1))
            .map(|seq| result_item(mix, seq))
            .collect();
        seq += items.len() as u64;
        let batch = vantage_mqtt::ResultsBatch {
            v: vantage_mqtt::PROTOCOL_VERSION,
            items,
        };
        messages.push((seq, vantage_mqtt::encode(&batch)));
    }
    messages
}

/// A connected simulated agent, subscribed to its acks.
struct SimulatedAgent {
    id: String,
    client: AsyncClient,
    eventloop: rumqttc::EventLoop,
}

async fn connect_agent(identity: MqttIdentity) -> anyhow::Result<SimulatedAgent> {
    let mut options = identity.options(&vantage_mqtt::topic::nats_client_id(&identity.agent_id))?;
    options.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    connect(&mut eventloop).await?;
    client
        .subscribe(
            format!("vantage/v1/agents/{}/results/ack", identity.agent_id),
            QoS::AtMostOnce,
        )
        .await?;
    // Wait for the SUBACK so no ack can be missed.
    loop {
        if let Event::Incoming(Incoming::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    Ok(SimulatedAgent {
        id: identity.agent_id,
        client,
        eventloop,
    })
}

/// Publishes every message of one agent and returns when its last seq is acknowledged.
async fn run_agent(
    agent: SimulatedAgent,
    messages: Vec<(u64, Vec<u8>)>,
    rows: u64,
    heartbeat_every: u64,
    window_rows: u64,
) -> anyhow::Result<()> {
    let SimulatedAgent {
        id,
        client,
        mut eventloop,
    } = agent;
    let ack_topic = format!("vantage/v1/agents/{id}/results/ack");
    let topic = format!("vantage/v1/agents/{id}/results");
    let heartbeat_topic = format!("vantage/v1/agents/{id}/heartbeat");
    // Rows acknowledged so far: the publisher keeps at most `window_rows` unacknowledged.
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        let mut sent = 0u64;
        // `next_seq`: the seq after the message's last row.
        for (next_seq, payload) in messages {
            if window_rows > 0
                && acked_rx
                    .wait_for(|acked| (next_seq - 1).saturating_sub(*acked) <= window_rows)
                    .await
                    .is_err()
            {
                return;
            }
            if client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
            sent += 1;
            if heartbeat_every > 0 && sent.is_multiple_of(heartbeat_every) {
                let heartbeat = vantage_mqtt::Heartbeat {
                    v: vantage_mqtt::PROTOCOL_VERSION,
                    at_ms: vantage_tests::now_ms(),
                    uptime_s: sent,
                    spool_len: rows + 1 - next_seq,
                    spool_dropped_total: 0,
                    spool_unsendable_total: 0,
                    spool_write_errors_total: 0,
                    next_seq,
                    config_revision: 0,
                };
                let payload = vantage_mqtt::encode(&heartbeat);
                if client
                    .publish(&heartbeat_topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    // Acks are exact seq ranges; done when every seq was acknowledged.
    let mut acked = vec![false; rows as usize + 1];
    let mut n_acked = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .with_context(|| format!("agent {id}: {n_acked} of {rows} acknowledged after 300 s"))?;
        match event {
            Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == ack_topic => {
                let ack: vantage_mqtt::ResultsAck = vantage_mqtt::decode(&p.payload)?;
                for (from, to) in ack.ranges {
                    for seq in from..=to.min(rows) {
                        if !std::mem::replace(&mut acked[seq as usize], true) {
                            n_acked += 1;
                        }
                    }
                }
                if n_acked == rows {
                    return Ok(());
                }
                let _ = acked_tx.send(n_acked);
            }
            Ok(_) => {}
            Err(error) => anyhow::bail!("agent {id} lost its session: {error}"),
        }
    }
}

/// Runs a checkpoint on the PostgreSQL server, so that each timed phase (ingest, COPY)
/// starts with none due. Each run writes about half a GiB of WAL; without this a
/// checkpoint fell into one phase or the other by chance: it writes the dirty buffers, and
/// every page changed after it is logged whole once.
async fn checkpoint(pg_admin_url: &str) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(pg_admin_url).await?;
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Loads the same rows with `psql \copy` into a copy of the compact results table (same
/// migrations, same day partitions, keys made beforehand); rows/s.
async fn copy_baseline(
    pg_admin_url: &str,
    mix: Mix,
    agents: &[String],
    rows_per_agent: u64,
) -> anyhow::Result<f64> {
    let store = TestStore::create(Backend::Postgres).await?;
    let url = store.url.context("postgres url")?;
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::migrate!("../migrations/postgres").run(&pool).await?;
    // The same day partitions a control plane makes at start.
    let now = vantage_tests::now_ms();
    {
        use vantage_control_plane::store::partitions::{METRICS, MINUTES, RESULTS, ensure};
        for table in [RESULTS, METRICS, MINUTES] {
            ensure(&pool, table, now - 7 * 86_400_000, now).await?;
        }
    }
    drop(pool);
    // The same rows as the control plane stores them: compact, under integer keys that are
    // made here before the timed load (a handful of names).
    let mut checks: BTreeMap<String, i64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, i64> = BTreeMap::new();
    let dir = tempfile::tempdir()?;
    let csv_path = dir.path().join("rows.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&csv_path)?);
    let us = |ms: Option<f64>| {
        ms.map(|ms| ((ms * 1000.0).round() as i64).to_string())
            .unwrap_or_default()
    };
    for a in 0..agents.len() {
        for seq in 1..=rows_per_agent {
            let item = result_item(mix, seq);
            let n = checks.len() as i64 + 1;
            let check = *checks.entry(item.check_id.clone()).or_insert(n);
            let n = reasons.len() as i64 + 1;
            let reason = *reasons.entry(item.reason.clone()).or_insert(n);
            let t = &item.timings;
            // measured_at_ms, seq, received_at_ms, check_key, agent_key, region_key, reason_key,
            // total_us, dns_us, connect_us, tls_us, ttfb_us, transfer_us, status_code, ok
            writeln!(
                csv,
                "{},{seq},{},{check},{},1,{reason},{},{},{},{},{},{},{},{}",
                item.measured_at_ms,
                mix.start_ms,
                a + 1,
                us(Some(t.total_ms)),
                us(t.dns_ms),
                us(t.connect_ms),
                us(t.tls_ms),
                us(t.ttfb_ms),
                us(t.transfer_ms),
                item.status_code.map(|c| c.to_string()).unwrap_or_default(),
                item.ok,
            )?;
        }
    }
    let pool = sqlx::PgPool::connect(&url).await?;
    for (a, agent) in agents.iter().enumerate() {
        sqlx::query("INSERT INTO agent_keys (key, id) VALUES ($1, $2)")
            .bind((a + 1) as i32)
            .bind(agent)
            .execute(&pool)
            .await?;
    }
    sqlx::query("INSERT INTO region_keys (key, id) VALUES (1, 'bench')")
        .execute(&pool)
        .await?;
    for (id, key) in &checks {
        sqlx::query("INSERT INTO check_keys (key, id) VALUES ($1, $2)")
            .bind(*key as i32)
            .bind(id)
            .execute(&pool)
            .await?;
    }
    for (text, key) in &reasons {
        sqlx::query("INSERT INTO texts (key, text, last_seen_ms) VALUES ($1, $2, $3)")
            .bind(*key as i32)
            .bind(text)
            .bind(mix.start_ms)
            .execute(&pool)
            .await?;
    }
    drop(pool);
    csv.flush()?;
    drop(csv);
    checkpoint(pg_admin_url).await?;
    let started = Instant::now();
    let output = std::process::Command::new("psql")
        .arg(&url)
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-c")
        .arg(format!(
            "\\copy result_rows (measured_at_ms, seq, received_at_ms, check_key, agent_key, region_key, \
             reason_key, total_us, dns_us, connect_us, tls_us, ttfb_us, transfer_us, status_code, ok) \
             FROM '{}' WITH (FORMAT csv)",
            csv_path.display()
        ))
        .output()
        .context("psql not found")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "psql \\copy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((agents.len() as u64 * rows_per_agent) as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let pg_admin_url = std::env::var("VANTAGE_TEST_PG_URL")
        .context("VANTAGE_TEST_PG_URL is not set: run scripts/bench")?;
    let store = TestStore::create(args.backend).await?;
    let batch_rows = args.cp_batch_rows.to_string();
    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().join("data");
    // The checks are created through the API faster than its default per-address rate.
    let mut env = vec![
        ("VANTAGE_INGEST_BATCH_ROWS", batch_rows),
        ("VANTAGE_API_RATE_PER_S", "100000".to_owned()),
        ("VANTAGE_API_RATE_BURST", "100000".to_owned()),
        // The agents are not silent before their run starts, and the fallback executor
        // (which starts three intervals after start) must not run the judged checks while
        // they are created: an interval of an hour keeps both quiet.
        ("VANTAGE_HEARTBEAT_INTERVAL_S", "3600".to_owned()),
    ];
    let cluster = if args.cluster {
        let (cluster, cluster_env) = vantage_tests::nats::NatsCluster::for_control_plane(
            &data_dir,
            &temp.path().join("broker"),
            &[],
        )?;
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
    let mut identities = Vec::new();
    for i in 0..args.agents {
        let mut identity = MqttIdentity::enroll(&cp, "bench").await?;
        if let Some(cluster) = &cluster {
            identity.mqtt_port = cluster.nodes[i % cluster.nodes.len()].mqtt;
        }
        identities.push(identity);
        // Enrollment is rate limited per address; stay under it.
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    let agent_ids: Vec<String> = identities.iter().map(|i| i.agent_id.clone()).collect();
    let total = args.agents as u64 * args.rows_per_agent;
    let mix = Mix {
        judged_checks: args.judged_checks,
        flip_every: args.flip_every,
        start_ms: vantage_tests::now_ms() - 3_600_000,
    };
    // The checks the rows name, before the agents connect: an agent's session is not polled
    // until its run starts, and creating 10,000 checks takes longer than a keepalive.
    for i in 0..args.judged_checks {
        let (status, answer) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("ck-{i:05}"), "name": format!("judged {i}"),
                       "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9},
                       "interval_s": 60, "timeout_ms": 1000, "regions": ["bench"]}),
            )
            .await?;
        anyhow::ensure!(status == 201, "check {i}: {status} {answer}");
    }
    // Connect every agent first: the timed part is ingest, not TLS logins.
    let mut agents = Vec::new();
    for identity in identities {
        agents.push(connect_agent(identity).await?);
    }
    let judged_line = "vantage_verdict_checks_judged_total";
    let judged_before = if args.judged_checks > 0 {
        cp.counter(judged_line).await?
    } else {
        0
    };
    let messages = result_messages(mix, args.rows_per_agent, args.batch);
    let agents: Vec<_> = agents
        .into_iter()
        .map(|agent| (agent, messages.clone()))
        .collect();
    checkpoint(&pg_admin_url).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (agent, messages) in agents {
        tasks.push(tokio::spawn(run_agent(
            agent,
            messages,
            args.rows_per_agent,
            args.heartbeat_every,
            args.window * args.batch,
        )));
    }
    // Messages the embedded broker dropped before ingest read them (its ingest log holds
    // 64 MiB per kind); the simulated agents do not resend, so a run with skips fails.
    let skipped_line = "vantage_broker_log_skipped_total";
    for task in tasks {
        if let Err(error) = task.await.map_err(anyhow::Error::from).and_then(|run| run) {
            match cp.counter(skipped_line).await {
                Ok(skipped) => println!("ingest failed: {skipped_line} {skipped}"),
                Err(read) => println!("ingest failed; {skipped_line} unread: {read}"),
            }
            return Err(error);
        }
    }
    let elapsed = started.elapsed();
    let skipped = cp.counter(skipped_line).await?;
    // Judging runs after each commit on its own task: wait until it stops moving.
    let mut judging = String::new();
    if args.judged_checks > 0 {
        let (mut last, mut last_change) = (cp.counter(judged_line).await?, Instant::now());
        while last_change.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = cp.counter(judged_line).await?;
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
        }
        let transitions = cp.counter("vantage_verdict_transitions_total").await?;
        let waits = cp.counter("vantage_judge_queue_full_total").await?;
        let (_, incidents) = cp.get("/api/v1/incidents?limit=10000").await?;
        judging = format!(
            " judged_checks={} flip_every={} checks_judged={} transitions={transitions} incidents={} judging_caught_up_s={:.2} batches_waiting_for_judging={waits}",
            args.judged_checks,
            args.flip_every,
            last - judged_before,
            incidents.as_array().map_or(0, Vec::len),
            (last_change - started).as_secs_f64()
        );
    }
    let pool = cp.store_pool().await?;
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM results")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(stored as u64 == total, "stored {stored} of {total} rows");
    let ingest_rate = total as f64 / elapsed.as_secs_f64();
    let copy_rate = copy_baseline(&pg_admin_url, mix, &agent_ids, args.rows_per_agent).await?;
    // Whether the PostgreSQL server (the COPY's, and the store's with `--backend postgres`)
    // flushes its WAL to disk.
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&sqlx::PgPool::connect(&pg_admin_url).await?)
        .await?;
    let backend = args.backend.name();
    // Heartbeats sent; the last of each agent follows its last result message, so the
    // clock may stop before ingest has taken it.
    let heartbeats = args.agents as u64
        * args
            .rows_per_agent
            .div_ceil(args.batch)
            .checked_div(args.heartbeat_every)
            .unwrap_or(0);
    println!(
        "ingest backend={backend} pg_fsync={fsync} broker={} agents={} rows={total} batch={} window={} heartbeats={heartbeats} cp_batch_rows={} broker_log_skipped={skipped} elapsed_s={:.2} committed_rows_per_s={:.0} \
         pg_copy_rows_per_s={:.0} ratio_to_copy={:.0}%{judging}",
        if args.cluster { "cluster" } else { "embedded" },
        args.agents,
        args.batch,
        args.window,
        args.cp_batch_rows,
        elapsed.as_secs_f64(),
        ingest_rate,
        copy_rate,
        100.0 * ingest_rate / copy_rate
    );
    Ok(())
}
