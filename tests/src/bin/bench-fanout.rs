//! Live-feed fan-out: many WebSocket clients of `/api/v1/live?kind=result` (in a child process
//! of this binary, so the control plane's memory and CPU are its own) and a publisher putting
//! results on the hub of a control plane run in this process, at a set rate over a set number
//! of keys (checks), what is due each millisecond as one batch (as ingest publishes a
//! committed batch). Each event carries the microsecond it was published; the clients report
//! publish → client latency (p50, p99, max), what they received, and `lagged` notices; this
//! process prints those beside the control plane's RSS and CPU and its coalescing counter.
//!
//! Usage: `bench-fanout [--clients 1000] [--rate 100] [--keys 100] [--seconds 10]`.
//! (`--role clients` is how the binary runs its own child.)

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vantage_control_plane::app::Application;
use vantage_control_plane::hub::LiveEvent;
use vantage_control_plane::settings::Settings;

/// The check id of the event that tells clients the run is over.
const END: &str = "end-of-run";

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Args {
    role: String,
    clients: usize,
    rate: u64,
    keys: u64,
    seconds: u64,
    port: u16,
    ca: String,
    token_file: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        role: "server".into(),
        clients: 1000,
        rate: 100,
        keys: 100,
        seconds: 10,
        port: 0,
        ca: String::new(),
        token_file: String::new(),
    };
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--role" => args.role = value,
            "--clients" => args.clients = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--keys" => args.keys = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--port" => args.port = value.parse()?,
            "--ca" => args.ca = value,
            "--token-file" => args.token_file = value,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(args.rate > 0 && args.keys > 0 && args.clients > 0 && args.seconds > 0);
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.role.as_str() {
        "server" => runtime.block_on(server(args)),
        "clients" => runtime.block_on(clients(args)),
        other => anyhow::bail!("unknown role {other}"),
    }
}

async fn server(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut settings = Settings::ephemeral(dir.path().to_owned());
    // Every client connects from 127.0.0.1: room for all of them at once.
    settings.http_max_connections = u32::try_from(args.clients + 64)?;
    settings.api_rate_per_s = 1e6;
    settings.api_rate_burst = 1e6;
    let app = Application::build(settings).await?;
    let state = app.state().clone();
    let port = app.http_port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let mut child = Command::new(std::env::current_exe()?)
        .args(["--role", "clients"])
        .args(["--clients", &args.clients.to_string()])
        .args(["--port", &port.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args([
            "--ca",
            &dir.path().join("pki").join("ca.pem").display().to_string(),
        ])
        .args([
            "--token-file",
            &dir.path().join("admin-token").display().to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let connected = tokio::time::timeout(Duration::from_secs(300), lines.recv())
        .await
        .context("the clients did not connect in 300 s")?
        .context("the clients' process ended")?;
    anyhow::ensure!(connected.starts_with("connected"), "{connected}");
    println!("fanout {connected}");

    let pid = std::process::id();
    let before = vantage_tests::proc_sample(pid)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let total = args.rate * args.seconds;
    let mut published = 0u64;
    while published < total {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
        // What is due goes out as one batch, as a committed ingest batch does.
        let mut batch = Vec::new();
        while published < due.min(total) {
            let key = published % args.keys;
            batch.push(LiveEvent {
                kind: "result",
                agent_id: "bench".into(),
                region: "r1".into(),
                check_id: Some(format!("c{key}")),
                source: None,
                at_ms: now_us() / 1000,
                data: json!({"check_id": format!("c{key}"), "ok": true, "seq": published,
                    "sent_us": now_us(), "timings": {"total_ms": 12.5}})
                .into(),
            });
            published += 1;
        }
        state.hub.publish_many(batch);
    }
    let publishing_s = started.elapsed().as_secs_f64();
    // Let the clients drain, then tell them the run is over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vantage_tests::proc_sample(pid)?;
    state.hub.publish(LiveEvent {
        kind: "result",
        agent_id: "bench".into(),
        region: "r1".into(),
        check_id: Some(END.into()),
        source: None,
        at_ms: now_us() / 1000,
        data: json!({"check_id": END}).into(),
    });
    let report = tokio::time::timeout(Duration::from_secs(120), lines.recv())
        .await
        .context("no report from the clients")?
        .context("the clients' process ended without a report")?;
    let report: Value = serde_json::from_str(&report).with_context(|| report.clone())?;
    let _ = child.wait();
    let elapsed = publishing_s + 2.0;
    let cpu_pct = 100.0 * (after.cpu_ticks - before.cpu_ticks) as f64 / 100.0 / elapsed;
    let coalesced = state.counters.live_coalesced.load(Ordering::Relaxed);
    let missed = state.counters.live_missed.load(Ordering::Relaxed);
    let wanted = published * args.clients as u64;
    println!(
        "fanout clients={} rate={}/s keys={} seconds={} published={published} \
         deliveries={} of {wanted} ({:.1} %) coalesced={coalesced} missed={missed} \
         lagged_notices={} latency_ms p50={:.2} p99={:.2} p999={:.2} max={:.2} \
         cp_rss_mib={:.1} cp_cpu_pct={cpu_pct:.0} clients_cpu_pct={}",
        args.clients,
        args.rate,
        args.keys,
        args.seconds,
        report["received"],
        100.0 * report["received"].as_f64().unwrap_or(0.0) / wanted.max(1) as f64,
        report["lagged"],
        report["p50_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        report["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        report["p999_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        report["max_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        after.rss_kib as f64 / 1024.0,
        report["cpu_pct"],
    );
    let _ = std::io::stdout().flush();
    let _ = stop.send(());
    let _ = serving.await;
    Ok(())
}

/// One client's tally: latencies in microseconds, lagged notices.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    lagged: u64,
}

async fn clients(args: Args) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ca = std::fs::read_to_string(&args.ca)?;
    let token = std::fs::read_to_string(&args.token_file)?.trim().to_owned();
    let tls = Arc::new(vantage_agent::tls::pinned_client(&ca)?);
    let url = format!("wss://127.0.0.1:{}/api/v1/live?kind=result", args.port);
    let mut sockets = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let mut request = url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        // A small read buffer: the default 128 KiB one is zeroed on every read.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024);
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
        )
        .await?;
        sockets.push(socket);
    }
    let pid = std::process::id();
    let before = vantage_tests::proc_sample(pid)?;
    let started = Instant::now();
    println!("connected clients={}", sockets.len());
    let _ = std::io::stdout().flush();
    let deadline = Duration::from_secs(args.seconds + 60);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let _ = tokio::time::timeout(deadline, async {
                    while let Some(Ok(message)) = socket.next().await {
                        let Message::Text(text) = message else {
                            continue;
                        };
                        let now = now_us();
                        if text.contains(END) {
                            break;
                        }
                        if text.contains("\"kind\":\"lagged\"") {
                            tally.lagged += 1;
                            continue;
                        }
                        if let Some(sent) = sent_us(&text) {
                            let latency = u32::try_from((now - sent).max(0)).unwrap_or(u32::MAX);
                            tally.latencies_us.push(latency);
                        }
                    }
                })
                .await;
                tally
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut lagged = 0;
    for task in tasks {
        let tally = task.await?;
        lagged += tally.lagged;
        all.extend(tally.latencies_us);
    }
    let after = vantage_tests::proc_sample(pid)?;
    let cpu_pct = 100.0 * (after.cpu_ticks - before.cpu_ticks) as f64
        / 100.0
        / started.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() - 1) as f64 * q).round() as usize]
    };
    println!(
        "{}",
        json!({"received": all.len(), "lagged": lagged, "p50_us": at(0.5), "p99_us": at(0.99),
            "p999_us": at(0.999), "max_us": all.last().copied().unwrap_or(0),
            "cpu_pct": cpu_pct.round()})
    );
    let _ = std::io::stdout().flush();
    Ok(())
}

/// The `sent_us` stamp in an event's text, without parsing the whole of it.
fn sent_us(text: &str) -> Option<i64> {
    let start = text.find("\"sent_us\":")? + "\"sent_us\":".len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}
