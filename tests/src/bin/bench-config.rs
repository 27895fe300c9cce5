//! Control-plane memory across configuration churn: agents with hundreds of checks each, a
//! thousand check changes and reconnect storms; RSS at start and end must stay flat. RSS is
//! printed after setup, after a warm-up of a fifth as many changes and one storm (the start),
//! and at the end; start and end are read after 7 s without changes (the control plane trims
//! its heap at most every 5 s after logins). Then the time to create thousands of checks through the API.
//!
//! The agents are MQTT sessions driven by this process (enrolled through the real API, mutual
//! TLS through the real front door, subscribed to their own config, cmd and results/ack,
//! saying hello and online like `vantage-agent`), so a hundred of them fit on this machine
//! next to the control plane; they run no probes.
//!
//! Usage: `bench-config --backend sqlite|postgres [--agents 100] [--regions 5]
//! [--checks-per-region 500] [--changes 1000] [--storms 5] [--create 10000]`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, QoS};
use serde_json::json;
use tokio::task::JoinHandle;
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore, connect, proc_sample};

/// The newest config (revision, number of checks) each simulated agent received.
type Received = Arc<Mutex<HashMap<String, (u64, usize)>>>;

/// One connected simulated agent.
struct Session {
    client: AsyncClient,
    task: JoinHandle<()>,
}

/// Quiet time before RSS is read at start and end.
const SETTLE: Duration = Duration::from_secs(7);

async fn open_session(identity: &MqttIdentity, received: Received) -> anyhow::Result<Session> {
    let id = identity.agent_id.clone();
    let mut options = identity.options(&id)?;
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    connect(&mut eventloop).await?;
    for kind in ["config", "cmd", "results/ack"] {
        client
            .subscribe(format!("vantage/v1/agents/{id}/{kind}"), QoS::AtLeastOnce)
            .await?;
    }
    let hello = json!({"v": 1, "version": "bench", "arch": "x86_64", "os": "linux",
        "hostname": id, "labels": {}, "capabilities": ["http"], "boot_id": "b",
        "next_seq": 1, "config_revision": 0});
    client
        .publish(
            format!("vantage/v1/agents/{id}/hello"),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&hello)?,
        )
        .await?;
    client
        .publish(
            format!("vantage/v1/agents/{id}/status"),
            QoS::AtLeastOnce,
            true,
            br#"{"v":1,"state":"online"}"#.to_vec(),
        )
        .await?;
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            let rumqttc::Event::Incoming(rumqttc::Incoming::Publish(publish)) = event else {
                continue;
            };
            if !publish.topic.ends_with("/config") {
                continue;
            }
            let Ok(config) = serde_json::from_slice::<serde_json::Value>(&publish.payload) else {
                continue;
            };
            let revision = config["revision"].as_u64().unwrap_or(0);
            let n_checks = config["checks"].as_array().map_or(0, Vec::len);
            if let Ok(mut map) = received.lock() {
                let entry = map.entry(id.clone()).or_default();
                if revision >= entry.0 {
                    *entry = (revision, n_checks);
                }
            }
        }
    });
    Ok(Session { client, task })
}

async fn close_session(session: Session) {
    let _ = session.client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    session.task.abort();
}

fn http_check(id: &str, region: &str, interval_s: u32) -> serde_json::Value {
    json!({"id": id, "name": id, "interval_s": interval_s, "timeout_ms": 5000,
        "regions": [region],
        "kind": {"type": "http", "url": format!("https://{id}.example.net/health"),
            "assertions": [{"body_contains": "ok"}]}})
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(proc_sample(pid)?.rss_kib as f64 / 1024.0)
}

/// Creates checks through the API with `concurrency` requests in flight.
async fn create_checks(
    cp: &ControlPlane,
    checks: Vec<serde_json::Value>,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let checks = &checks;
    let workers = (0..concurrency).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            let Some(check) = checks.get(i) else {
                return anyhow::Ok(());
            };
            let (status, reply) = cp.post("/api/v1/checks", check.clone()).await?;
            anyhow::ensure!(status == 201, "create {i}: {status} {reply}");
        }
    });
    futures_util::future::try_join_all(workers).await?;
    Ok(started.elapsed())
}

/// Waits until every agent of `expected` holds a config with its number of checks.
async fn wait_configs(
    received: &Received,
    expected: &HashMap<String, usize>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let done = {
            let map = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            expected
                .iter()
                .all(|(id, n)| map.get(id).is_some_and(|(_, got)| got == n))
        };
        if done {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            let map = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let behind: Vec<String> = expected
                .iter()
                .filter(|(id, n)| map.get(*id).is_none_or(|(_, got)| got != *n))
                .take(5)
                .map(|(id, n)| format!("{id}: {:?} of {n}", map.get(id)))
                .collect();
            anyhow::bail!("agents did not get their configs within {timeout:?}: {behind:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The configuration churn: check changes, with reconnect storms of every agent in between.
struct Churn<'a, R: Fn(usize) -> String> {
    cp: &'a ControlPlane,
    identities: &'a [MqttIdentity],
    sessions: &'a mut Vec<Session>,
    received: &'a Received,
    pid: u32,
    n_checks: usize,
    region: &'a R,
}

impl<R: Fn(usize) -> String> Churn<'_, R> {
    /// Changes `n_changes` checks (each changes the configs of every agent of its region),
    /// numbered from `first`, with `n_storms` reconnect storms spread over them. Returns the
    /// time taken and the control plane's RSS after each storm.
    async fn run(
        &mut self,
        first: usize,
        n_changes: usize,
        n_storms: usize,
    ) -> anyhow::Result<(Duration, Vec<f64>)> {
        let started = Instant::now();
        let storm_every = n_changes / (n_storms + 1).max(1);
        let mut rss_samples = Vec::new();
        for change in first..first + n_changes {
            let i = (change * 7919) % self.n_checks;
            let interval_s = 60 + (change % 50) as u32;
            let body = http_check(&format!("c{i}"), &(self.region)(i), interval_s);
            let (status, reply) = self.cp.put(&format!("/api/v1/checks/c{i}"), body).await?;
            anyhow::ensure!(status == 200, "change {change}: {status} {reply}");
            let done = change - first;
            if storm_every > 0
                && done > 0
                && done.is_multiple_of(storm_every)
                && rss_samples.len() < n_storms
            {
                for session in self.sessions.drain(..) {
                    close_session(session).await;
                }
                for identity in self.identities {
                    self.sessions
                        .push(open_session(identity, self.received.clone()).await?);
                }
                rss_samples.push(rss_mib(self.pid)?);
            }
        }
        Ok((started.elapsed(), rss_samples))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut backend = Backend::Sqlite;
    let (mut n_agents, mut n_regions, mut per_region) = (100usize, 5usize, 500usize);
    let (mut n_changes, mut n_storms, mut n_create) = (1000usize, 5usize, 10_000usize);
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--backend" => backend = Backend::parse(&value)?,
            "--agents" => n_agents = value.parse()?,
            "--regions" => n_regions = value.parse()?,
            "--checks-per-region" => per_region = value.parse()?,
            "--changes" => n_changes = value.parse()?,
            "--storms" => n_storms = value.parse()?,
            "--create" => n_create = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let store = TestStore::create(backend).await?;
    // The API's per-address rate limit (200/s by default) would pace this one client.
    let cp = ControlPlane::start_with(
        &store,
        &[
            ("VANTAGE_MAX_CONNECTIONS", "20000"),
            ("VANTAGE_API_RATE_PER_S", "100000"),
            ("VANTAGE_API_RATE_BURST", "100000"),
        ],
    )
    .await?;
    let pid = cp.pid().context("control plane pid")?;
    let region = |i: usize| format!("r{}", i % n_regions);

    let mut identities = Vec::with_capacity(n_agents);
    for i in 0..n_agents {
        identities.push(MqttIdentity::enroll(&cp, &region(i)).await?);
    }
    let received: Received = Arc::default();
    let mut sessions = Vec::with_capacity(n_agents);
    for identity in &identities {
        sessions.push(open_session(identity, received.clone()).await?);
    }
    let mut expected: HashMap<String, usize> = identities
        .iter()
        .map(|i| (i.agent_id.clone(), per_region))
        .collect();
    let checks: Vec<serde_json::Value> = (0..n_regions * per_region)
        .map(|i| http_check(&format!("c{i}"), &region(i), 60))
        .collect();
    let setup = create_checks(&cp, checks, 4).await?;
    wait_configs(&received, &expected, Duration::from_secs(120)).await?;
    println!(
        "config-churn backend={} agents={n_agents} regions={n_regions} checks_per_agent={per_region} setup_s={:.1}",
        backend.name(),
        setup.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_setup = rss_mib(pid)?;

    // Warm-up: the first changes and reconnects bring the allocator, the router's per-client
    // buffers and the store's caches to their working size. Then the measured run.
    let mut ctx = Churn {
        cp: &cp,
        identities: &identities,
        sessions: &mut sessions,
        received: &received,
        pid,
        n_checks: n_regions * per_region,
        region: &region,
    };
    let (_, warm_storms) = ctx.run(0, n_changes / 5, 1).await?;
    wait_configs(&received, &expected, Duration::from_secs(120)).await?;
    // Longer than the control plane's heap trim interval (5 s by default): both readings
    // come after the trim that follows a reconnect storm, as they would in a running system.
    tokio::time::sleep(SETTLE).await;
    let rss_start = rss_mib(pid)?;
    let (churn, rss_samples) = ctx.run(n_changes, n_changes, n_storms).await?;
    // Settle: every agent holds its region's latest config, then memory is read.
    wait_configs(&received, &expected, Duration::from_secs(120)).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_end = rss_mib(pid)?;
    println!(
        "config-churn backend={} rss_after_setup_mib={rss_setup:.1} warmup_changes={} warmup_storms={} rss_start_mib={rss_start:.1} changes={n_changes} storms={} churn_s={:.1} rss_end_mib={rss_end:.1} growth_pct={:.1} rss_at_storms_mib={}",
        backend.name(),
        n_changes / 5,
        warm_storms.len(),
        rss_samples.len(),
        churn.as_secs_f64(),
        (rss_end / rss_start - 1.0) * 100.0,
        rss_samples
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    );

    // Many new checks through the API, spread over the agents' regions.
    let new_checks: Vec<serde_json::Value> = (0..n_create)
        .map(|i| http_check(&format!("n{i}"), &region(i), 60))
        .collect();
    let created = create_checks(&cp, new_checks, 4).await?;
    println!(
        "config-create backend={} created={n_create} api_s={:.1} per_s={:.0}",
        backend.name(),
        created.as_secs_f64(),
        n_create as f64 / created.as_secs_f64()
    );
    let extra = n_create / n_regions;
    for n in expected.values_mut() {
        *n += extra;
    }
    let assigned = wait_configs(&received, &expected, Duration::from_secs(300)).await?;
    let rss_after = rss_mib(pid)?;
    println!(
        "config-create backend={} configs_current_after_s={:.1} checks_per_agent={} rss_mib={rss_after:.1}",
        backend.name(),
        assigned.as_secs_f64(),
        per_region + extra
    );
    for session in sessions {
        close_session(session).await;
    }
    Ok(())
}
