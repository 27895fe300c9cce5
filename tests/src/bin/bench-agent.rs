//! Agent footprint: resident memory and CPU of a real `vantage-agent` reporting host metrics
//! every second for 60 s, beside Debian's `prometheus-node-exporter` scraped once a second in
//! the same run. Both are read from `/proc/<pid>/{status,stat}`.
//!
//! Usage: `bench-agent [--seconds N]`. Needs `prometheus-node-exporter` on PATH or in
//! `/usr/bin` (`scripts/bench` installs it).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, free_port, proc_sample, wait_for};

fn agent_pid(agent: &Agent) -> anyhow::Result<u32> {
    let output = Command::new("pgrep")
        .arg("-f")
        .arg(agent.config_path.display().to_string())
        .output()?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .context("agent pid")?
        .parse()
        .context("pid")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut seconds = 60u64;
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--seconds" => seconds = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let exporter = vantage_tests::find_program(&[
        "prometheus-node-exporter",
        "/usr/bin/prometheus-node-exporter",
    ])
    .context("prometheus-node-exporter is not installed (scripts/bench installs it)")?;
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    let token = cp.enrollment_token("bench", 1).await?;
    let agent = Agent::start(&cp, &token, "metrics_interval_s = 1")?;
    let id = agent.wait_enrolled().await?;
    cp.wait_agent_state(&id, "online", Duration::from_secs(20))
        .await?;
    let agent_pid = agent_pid(&agent)?;

    let port = free_port();
    let mut node_exporter = Command::new(exporter)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let scrape_url = format!("http://127.0.0.1:{port}/metrics");
    let http = reqwest::Client::new();
    wait_for("node_exporter up", Duration::from_secs(10), || async {
        http.get(&scrape_url).send().await.ok().map(|_| ())
    })
    .await?;

    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start_agent = proc_sample(agent_pid)?;
    let start_exporter = proc_sample(node_exporter.id())?;
    let (mut agent_rss, mut exporter_rss) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n_scrapes = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        if http.get(&scrape_url).send().await?.bytes().await.is_ok() {
            n_scrapes += 1;
        }
        agent_rss.push(proc_sample(agent_pid)?.rss_kib);
        exporter_rss.push(proc_sample(node_exporter.id())?.rss_kib);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end_agent = proc_sample(agent_pid)?;
    let end_exporter = proc_sample(node_exporter.id())?;
    let _ = node_exporter.kill();
    let ticks_per_s = 100.0;
    let cpu = |a: &vantage_tests::ProcSample, b: &vantage_tests::ProcSample| {
        100.0 * (b.cpu_ticks - a.cpu_ticks) as f64 / ticks_per_s / elapsed
    };
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
    let max = |v: &[u64]| *v.iter().max().unwrap_or(&0) as f64 / 1024.0;
    let (_, metrics) = cp
        .get(&format!("/api/v1/metrics?agent={id}&limit=10000"))
        .await?;
    println!(
        "footprint seconds={seconds} agent_samples_stored={} node_exporter_scrapes={n_scrapes}",
        metrics.as_array().map(Vec::len).unwrap_or(0)
    );
    println!(
        "footprint vantage-agent rss_avg_mib={:.1} rss_max_mib={:.1} cpu_pct={:.2}",
        avg(&agent_rss),
        max(&agent_rss),
        cpu(&start_agent, &end_agent)
    );
    println!(
        "footprint node_exporter rss_avg_mib={:.1} rss_max_mib={:.1} cpu_pct={:.2}",
        avg(&exporter_rss),
        max(&exporter_rss),
        cpu(&start_exporter, &end_exporter)
    );
    Ok(())
}
