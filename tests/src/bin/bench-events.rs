//! Webhook → live feed latency: Zabbix media-type bodies POSTed to
//! `/api/v1/integrations/zabbix` at a steady rate until a WebSocket client of
//! `/api/v1/live?kind=event&source=zabbix` receives each event (TLS, authentication by the
//! source's secret, parsing, one transaction per event with its dedup and pairing, the hub),
//! p50/p99/max, with the control plane's CPU and RSS.
//!
//! Usage: `bench-events --backend sqlite|postgres [--rate N] [--seconds N] [--senders N]`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vantage_tests::{Backend, ControlPlane, TestStore, proc_sample};

fn body(id: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 1, "source": "zabbix",
        "event": {"id": id.to_string(), "name": format!("Load too high on edge-{}", id % 50),
            "source": 0, "value": 1, "status": "problem", "severity": "High", "nseverity": 4,
            "opdata": "", "acknowledged": false, "tags": [{"tag": "service", "value": "edge"}],
            "timestamp": 1_735_812_672, "date": "2025.01.02", "time": "10:11:12"},
        "trigger": {"id": "17001", "value": 1, "description": "Load above 8"},
        "recovery": null, "update": null,
        "host": {"host": format!("edge-{}", id % 50), "name": "", "ip": "192.0.2.10"},
        "alert": {"sendto": "ops", "subject": "Problem", "message": "Problem started"}
    }))
    .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut backend = Backend::Sqlite;
    let mut rate = 1000u64;
    let mut seconds = 10u64;
    let mut senders = 32usize;
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--backend" => backend = Backend::parse(&value)?,
            "--rate" => rate = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--senders" => senders = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let secret = cp
        .create_source(json!({"id": "zabbix", "kind": "zabbix"}))
        .await?;
    let mut socket = cp
        .live_socket("kind=event&source=zabbix&latest=false")
        .await?;
    let pid = cp.pid().context("control plane pid")?;

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cp.ca_pem.as_bytes())?)
        .pool_max_idle_per_host(senders)
        .build()?;
    let url = cp.url("/api/v1/integrations/zabbix");
    // Warm the connections and the store before measuring.
    for id in 1..=senders as u64 {
        let response = client
            .post(&url)
            .bearer_auth(&secret)
            .header("content-type", "application/json")
            .body(body(1_000_000 + id))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "warm-up: {}", response.status());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), socket.next()).await {}

    let total = rate * seconds;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let (queue, receiver) = async_channel(senders * 4);
    for _ in 0..senders {
        let (client, url, secret, sent, refused, receiver) = (
            client.clone(),
            url.clone(),
            secret.clone(),
            sent.clone(),
            refused.clone(),
            receiver.clone(),
        );
        tokio::spawn(async move {
            while let Ok(id) = receiver.recv().await {
                let payload = body(id);
                if let Ok(mut map) = sent.lock() {
                    map.insert(id, Instant::now());
                }
                let ok = client
                    .post(&url)
                    .bearer_auth(&secret)
                    .header("content-type", "application/json")
                    .body(payload)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let cpu_before = proc_sample(pid)?;
    let started = Instant::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for id in 1..=total {
            tick.tick().await;
            if queue.send(id).await.is_err() {
                break;
            }
        }
    });

    let mut latencies = Vec::with_capacity(total as usize);
    let mut max_rss_kib = 0;
    let mut last_sample = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(5), socket.next()).await
        else {
            continue;
        };
        let received = Instant::now();
        let message: Value = serde_json::from_str(&text)?;
        let items = match message.get("events") {
            Some(Value::Array(items)) => items.clone(),
            _ => vec![message],
        };
        for item in items {
            let Some(id) = item["data"]["external_id"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(at) = sent.lock().ok().and_then(|m| m.get(&id).copied()) {
                latencies.push(received.duration_since(at));
            }
        }
        if last_sample.elapsed() > Duration::from_millis(500) {
            max_rss_kib = max_rss_kib.max(proc_sample(pid)?.rss_kib);
            last_sample = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = proc_sample(pid)?;
    latencies.sort();
    // Clock ticks are 1/100 s on Linux.
    let cpu_s = (cpu_after.cpu_ticks - cpu_before.cpu_ticks) as f64 / 100.0;
    println!(
        "backend {} | {} events at {rate}/s over {:.1} s, {senders} senders | received {} | refused {}",
        backend.name(),
        total,
        elapsed.as_secs_f64(),
        latencies.len(),
        refused.load(Ordering::Relaxed)
    );
    println!(
        "webhook → WebSocket: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    println!(
        "control plane: {:.2} cores ({:.1} µs CPU per event), max RSS {:.1} MiB",
        cpu_s / elapsed.as_secs_f64(),
        cpu_s * 1e6 / total as f64,
        max_rss_kib as f64 / 1024.0
    );
    anyhow::ensure!(
        latencies.len() as u64 == total,
        "{} of {total} events reached the live feed",
        latencies.len()
    );
    Ok(())
}

/// A bounded multi-consumer queue of event ids (tokio's mpsc has one consumer).
fn async_channel(capacity: usize) -> (Sender, Receiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (Sender(tx), Receiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct Sender(tokio::sync::mpsc::Sender<u64>);

impl Sender {
    async fn send(&self, id: u64) -> Result<(), ()> {
        self.0.send(id).await.map_err(|_| ())
    }
}

#[derive(Clone)]
struct Receiver(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>);

impl Receiver {
    async fn recv(&self) -> Result<u64, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
