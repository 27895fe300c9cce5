//! Agent soak: a real `vantage-agent` (any build, natively or under qemu-user) reporting host
//! metrics every second and running `--checks` HTTP checks every second against a loopback
//! server for `--seconds`, its resident memory read from `/proc` every second. Prints RSS once
//! a minute and, at the end, how far RSS moved after the warm-up (the flatness figure), how
//! many check runs and metric samples the control plane committed, and what that is in days
//! of one agent with 10 checks and metrics every second.
//!
//! The acceleration is in the check runs only: `--checks 1000` for 864 s is as many check runs
//! (and results through the spool, the batches and the acks) as 10 checks every second for a
//! day. Metrics stay at one sample a second (the agent's shortest interval): they are not
//! accelerated, and the output says how many there were.
//!
//! Usage: `bench-soak [--checks 1000] [--seconds 864] [--warmup 60] [--agent PATH]
//! [--runner qemu-arm-static]`. Without `--agent`, the `vantage-agent` beside this binary.
//! Under `--runner`, the RSS is the emulator's process: the guest's memory plus qemu's own
//! (its translation cache grows as code is first run, so the warm-up matters more there).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, bin, proc_sample, wait_for};

/// Answers every connection with one `200 ok` and closes it (the agent's HTTP probe opens a
/// connection per run).
async fn http_target() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut read = 0;
                while read < buf.len() {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    Ok(port)
}

/// `VmRSS` and `RssAnon` of `pid`, in KiB.
fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Least-squares slope of `(seconds, kib)` in MiB per hour.
fn slope_mib_per_hour(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_r = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, r) in points {
        num += (t - mean_t) * (*r as f64 - mean_r);
        den += (t - mean_t) * (t - mean_t);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den * 3600.0 / 1024.0
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut checks, mut seconds, mut warmup) = (1000usize, 864u64, 60u64);
    let mut agent_path: Option<PathBuf> = None;
    let mut runner: Option<PathBuf> = None;
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--checks" => checks = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--warmup" => warmup = value.parse()?,
            "--agent" => agent_path = Some(value.into()),
            "--runner" => runner = Some(value.into()),
            other => bail!("unknown flag {other}"),
        }
    }
    let agent_path = agent_path.unwrap_or_else(|| bin("vantage-agent"));
    anyhow::ensure!(agent_path.exists(), "no agent at {}", agent_path.display());
    let command: Vec<PathBuf> = runner.iter().cloned().chain([agent_path.clone()]).collect();

    let port = http_target().await?;
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    let kind = vantage_mqtt::CheckKind::Http(vantage_mqtt::HttpCheck::get(format!(
        "http://127.0.0.1:{port}/"
    )));
    for i in 0..checks {
        let body = json!({"id": format!("s{i:05}"), "name": "soak", "kind": kind,
                          "interval_s": 1, "timeout_ms": 1000, "regions": ["soak"]});
        let (status, reply) = loop {
            let (status, reply) = cp.post("/api/v1/checks", body.clone()).await?;
            if status != 429 {
                break (status, reply);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        anyhow::ensure!(status == 201, "check creation: {status} {reply}");
    }
    // Many check creations in a row can leave the API's rate limit spent for a moment.
    let token = loop {
        match cp.enrollment_token("soak", 1).await {
            Ok(token) => break token,
            Err(error) if error.to_string().contains("429") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let agent = Agent::start_command(&cp, &token, "metrics_interval_s = 1", command)?;
    let id = agent.wait_enrolled().await?;
    cp.wait_agent_state(&id, "online", Duration::from_secs(60))
        .await
        .with_context(|| agent.log())?;
    let pid = agent.pid().context("agent pid")?;
    let committed = || cp.counter("vantage_ingest_rows_committed_total");
    wait_for("first results", Duration::from_secs(60), || async {
        (committed().await.ok()? > 0).then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    println!(
        "soak agent={} runner={} checks={checks} every 1 s, metrics every 1 s, seconds={seconds} warmup={warmup}",
        agent_path.display(),
        runner
            .as_ref()
            .map_or("none".into(), |r| r.display().to_string()),
    );

    let started = Instant::now();
    let cpu_start = proc_sample(pid)?.cpu_ticks;
    let mut rows_at_warmup = None;
    let mut after_warmup: Vec<(f64, u64)> = Vec::new();
    let mut anon_after_warmup: Vec<u64> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let total = warmup + seconds;
    for second in 0..=total {
        tick.tick().await;
        let (rss_kib, anon_kib) = rss(pid).with_context(|| agent.log())?;
        if second == warmup {
            rows_at_warmup = Some((committed().await?, Instant::now()));
        }
        if second >= warmup {
            after_warmup.push(((second - warmup) as f64, rss_kib));
            anon_after_warmup.push(anon_kib);
        }
        if second % 60 == 0 {
            println!(
                "soak t={second:>5}s rss_mib={:.2} anon_mib={:.2} rows_committed={}{}",
                mib(rss_kib),
                mib(anon_kib),
                committed().await?,
                if second < warmup { " (warm-up)" } else { "" }
            );
        }
    }
    let cpu_pct =
        (proc_sample(pid)?.cpu_ticks - cpu_start) as f64 / started.elapsed().as_secs_f64();
    let (rows_start, measured_from) = rows_at_warmup.context("the soak ended in its warm-up")?;
    let rows = committed().await? - rows_start;
    let measured_s = measured_from.elapsed().as_secs_f64();
    let rss_values: Vec<u64> = after_warmup.iter().map(|p| p.1).collect();
    let (first, last) = (rss_values[0], rss_values[rss_values.len() - 1]);
    let (min, max) = (
        *rss_values.iter().min().unwrap_or(&0),
        *rss_values.iter().max().unwrap_or(&0),
    );
    let (anon_min, anon_max) = (
        *anon_after_warmup.iter().min().unwrap_or(&0),
        *anon_after_warmup.iter().max().unwrap_or(&0),
    );
    // Rows are check results plus one metrics sample a second.
    let metric_samples = measured_s.round() as u64;
    let check_runs = rows.saturating_sub(metric_samples);
    println!(
        "soak after warm-up: rss first={:.2} last={:.2} min={:.2} max={:.2} MiB, max-min={:.2} MiB, \
         slope={:+.3} MiB/h; anon min={:.2} max={:.2} MiB; cpu_pct={cpu_pct:.0}",
        mib(first),
        mib(last),
        mib(min),
        mib(max),
        mib(max - min),
        slope_mib_per_hour(&after_warmup),
        mib(anon_min),
        mib(anon_max),
    );
    println!(
        "soak committed over {measured_s:.0} s: {rows} rows = ~{check_runs} check runs ({:.0}/s of {checks} offered) + ~{metric_samples} metric samples; \
         = {:.2} days of 10 checks every second (check runs); metrics not accelerated",
        check_runs as f64 / measured_s,
        check_runs as f64 / (10.0 * 86_400.0),
    );
    drop(agent);
    Ok(())
}
