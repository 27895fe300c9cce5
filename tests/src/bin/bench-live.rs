//! Live feed latency: a result published by an agent over mutual-TLS MQTT until a WebSocket
//! client of `/api/v1/live` receives it (front door, broker, ingest, commit, hub), p50/p99.
//!
//! Usage: `bench-live --backend sqlite|postgres [--messages N] [--interval-ms N]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use rumqttc::{AsyncClient, QoS};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore, connect};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut backend = Backend::Sqlite;
    let mut messages = 2000u64;
    let mut interval_ms = 5u64;
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--backend" => backend = Backend::parse(&value)?,
            "--messages" => messages = value.parse()?,
            "--interval-ms" => interval_ms = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "bench").await?;

    let mut socket = cp
        .live_socket(&format!("kind=result&agent={}", identity.agent_id))
        .await?;

    let (client, mut eventloop) = AsyncClient::new(identity.options(&identity.agent_id)?, 256);
    connect(&mut eventloop).await?;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let topic = format!("vantage/v1/agents/{}/results", identity.agent_id);
    let sent_by_publisher = sent.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
        for seq in 1..=messages {
            tick.tick().await;
            let payload = json!({"v": 1, "items": [{"seq": seq, "measured_at_ms": vantage_agent::now_ms(),
                "check_id": "bench-live", "ok": true, "reason": "status 200", "timings": {"total_ms": 1.0}}]});
            if let Ok(mut map) = sent_by_publisher.lock() {
                map.insert(seq, Instant::now());
            }
            let _ = client
                .publish(
                    &topic,
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&payload).unwrap_or_default(),
                )
                .await;
        }
    });
    let mut latencies = Vec::with_capacity(messages as usize);
    let deadline = Instant::now() + Duration::from_secs(60 + messages * interval_ms / 1000);
    while (latencies.len() as u64) < messages && Instant::now() < deadline {
        let Some(Ok(Message::Text(text))) =
            tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .context("live feed went quiet")?
        else {
            continue;
        };
        let received = Instant::now();
        let event: serde_json::Value = serde_json::from_str(&text)?;
        let Some(seq) = event["data"]["seq"].as_u64() else {
            continue;
        };
        if let Some(sent_at) = sent.lock().ok().and_then(|map| map.get(&seq).copied()) {
            latencies.push(received.duration_since(sent_at));
        }
    }
    anyhow::ensure!(
        latencies.len() as u64 == messages,
        "received {} of {messages}",
        latencies.len()
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let name = backend.name();
    println!(
        "live backend={name} messages={messages} rate_per_s={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        1000 / interval_ms.max(1),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0
    );
    Ok(())
}
