//! Release artifact measures: agent binary and tarball size per arch, edge image size, and
//! the agent's idle resident memory per arch, each agent enrolled and online at a real control
//! plane — natively on x86_64, under qemu-user for aarch64 and armv7 (indicative only: the
//! figure includes the emulator's own memory).
//!
//! Usage: `bench-image [--dist DIR] [--idle-seconds N]` (default `$VANTAGE_DIST_DIR` or
//! `dist`, 20 s). Run image/build first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore};

fn find(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found.pop()
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1_048_576.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut dist =
        PathBuf::from(std::env::var("VANTAGE_DIST_DIR").unwrap_or_else(|_| "dist".into()));
    let mut idle = 20u64;
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--dist" => dist = PathBuf::from(value),
            "--idle-seconds" => idle = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    println!(
        "{:<8} {:>12} {:>12} {:>28} {:>18}",
        "arch", "agent", "tarball", "edge image (allocated)", "idle RSS"
    );
    for (arch, runner) in [
        ("x86_64", None),
        ("aarch64", Some("qemu-aarch64-static")),
        ("armv7", Some("qemu-arm-static")),
    ] {
        let binary = dist.join("bin").join(arch).join("vantage-agent");
        if !binary.exists() {
            println!("{arch:<8} (not built)");
            continue;
        }
        let size = std::fs::metadata(&binary)?.len();
        let tarball = find(&dist, "vantage-agent-", &format!("-{arch}-linux.tar.gz"))
            .map(|p| std::fs::metadata(p).map(|m| m.len()))
            .transpose()?;
        // Raw size, and what the sparse file really occupies.
        let image = find(&dist, "vantage-edge-", &format!("-{arch}.img"))
            .map(|p| {
                std::fs::metadata(p)
                    .map(|m| (m.len(), std::os::unix::fs::MetadataExt::blocks(&m) * 512))
            })
            .transpose()?;
        let mut command = Vec::new();
        if let Some(runner) = runner {
            command.push(PathBuf::from(runner));
        }
        command.push(binary.canonicalize()?);
        let token = cp.enrollment_token(&format!("bench-{arch}"), 1).await?;
        let agent = Agent::start_command(&cp, &token, "", command)?;
        let id = agent.wait_enrolled().await?;
        cp.wait_agent_state(&id, "online", Duration::from_secs(60))
            .await
            .with_context(|| agent.log())?;
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let pid = agent.pid().context("agent exited")?;
        let rss = vantage_tests::proc_sample(pid)?.rss_kib;
        println!(
            "{arch:<8} {:>12} {:>12} {:>28} {:>18}",
            mib(size),
            tarball.map_or("-".into(), mib),
            image.map_or("-".into(), |(raw, allocated)| format!(
                "{} ({})",
                mib(raw),
                mib(allocated)
            )),
            format!(
                "{:.1} MiB{}",
                rss as f64 / 1024.0,
                if runner.is_some() { " (qemu)" } else { "" }
            ),
        );
    }
    println!(
        "idle RSS measured {idle} s after the agent came online; ARM figures include qemu-user"
    );
    Ok(())
}
