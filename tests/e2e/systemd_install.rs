//! install.sh's systemd path: a Debian 12 root with systemd as PID 1, booted with
//! `systemd-nspawn` (systemd is not PID 1 on the test machines), gets the agent installed
//! from the signed artifacts; the hardened unit runs it as its own user with only
//! `CAP_NET_RAW`, it comes online at the test's control plane, systemd restarts it after a
//! crash, and uninstall stops and removes it.
//!
//! The root comes from scripts/lib/systemd-root.sh (`$VANTAGE_SYSTEMD_ROOT`) and is booted
//! with `--volatile=overlay`, so every run starts from the same clean root and leaves it
//! untouched; the container shares the host's network, so the control plane on loopback is
//! reachable.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use vantage_tests::{Backend, ControlPlane, TestStore, output_text, wait_for};

use crate::install::dist_dir;

/// A booted container; powered off (then killed) on drop.
struct Container {
    nspawn: Child,
    leader: u32,
}

impl Container {
    async fn boot(root: &PathBuf, binds: &[(PathBuf, &str)]) -> anyhow::Result<Container> {
        let mut command = Command::new("systemd-nspawn");
        command.args([
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--console=pipe",
            "--quiet",
            "-D",
        ]);
        command.arg(root);
        for (host, guest) in binds {
            command.arg(format!("--bind-ro={}:{guest}", host.display()));
        }
        let nspawn = command
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start systemd-nspawn (scripts/test installs systemd-container)")?;
        let parent = nspawn.id();
        // The container's init: the `systemd` process below nspawn.
        let leader = wait_for("the container's init", Duration::from_secs(20), || async {
            init_below(parent)
        })
        .await?;
        let container = Container { nspawn, leader };
        // systemctl answers once the container's systemd has its socket; --wait then waits
        // for the boot to finish.
        let last = std::sync::Mutex::new(String::new());
        let booted = wait_for("the container to boot", Duration::from_secs(60), || async {
            let running = container
                .run(&["systemctl", "is-system-running", "--wait"])
                .ok()?;
            let state = String::from_utf8_lossy(&running.stdout).trim().to_owned();
            *last.lock().ok()? = output_text(&running);
            (state == "running" || state == "degraded").then_some(())
        })
        .await;
        booted.with_context(|| last.lock().map(|l| l.clone()).unwrap_or_default())?;
        Ok(container)
    }

    /// Runs `argv` inside the container, in all of its namespaces.
    fn run(&self, argv: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a"])
            .args(argv)
            .stdin(Stdio::null())
            .output()?)
    }

    /// The unit's status and recent journal, for error messages.
    fn journal(&self) -> String {
        let status = self
            .run(&["systemctl", "status", "vantage-agent", "--no-pager", "-l"])
            .map(|o| output_text(&o))
            .unwrap_or_default();
        let journal = self
            .run(&[
                "journalctl",
                "-u",
                "vantage-agent",
                "--no-pager",
                "-n",
                "30",
            ])
            .map(|o| output_text(&o))
            .unwrap_or_default();
        format!("{status}\n{journal}")
    }

    fn show(&self, property: &str) -> anyhow::Result<String> {
        let output = self.run(&[
            "systemctl",
            "show",
            "vantage-agent",
            "--value",
            "-p",
            property,
        ])?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// The first process named `systemd` among `pid`'s descendants.
fn init_below(pid: u32) -> Option<u32> {
    let mut queue = vec![pid];
    while let Some(next) = queue.pop() {
        let children = std::fs::read_to_string(format!("/proc/{next}/task/{next}/children"))
            .unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                return Some(child);
            }
            queue.push(child);
        }
    }
    None
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.run(&["systemctl", "poweroff"]);
        for _ in 0..50 {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Killing a PID namespace's init kills everything in it.
        let _ = Command::new("kill")
            .args(["-9", &self.leader.to_string()])
            .output();
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_sh_runs_the_agent_under_systemd_hardened() {
    systemd_install().await.unwrap();
}

async fn systemd_install() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::var("VANTAGE_SYSTEMD_ROOT").context(
        "VANTAGE_SYSTEMD_ROOT is not set: run the suite with scripts/test, which builds the root",
    )?);
    ensure!(
        root.join(".complete").exists(),
        "{} is not a complete root: run scripts/test",
        root.display()
    );
    let dist = dist_dir()?;
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    let token = cp.enrollment_token("systemd", 1).await?;
    let setup = tempfile::tempdir()?;
    std::fs::write(
        setup.path().join("token"),
        format!("VANTAGE_ENROLLMENT_TOKEN={token}\n"),
    )?;
    std::fs::copy(cp.data_dir.join("pki/ca.pem"), setup.path().join("ca.pem"))?;
    let container = Container::boot(
        &root,
        &[(dist.clone(), "/dist"), (setup.path().to_owned(), "/setup")],
    )
    .await?;

    let install = container.run(&[
        "sh",
        "/dist/install.sh",
        "--artifacts",
        "/dist",
        "--server-url",
        &cp.api_url(),
        "--ca-file",
        "/setup/ca.pem",
        "--token-file",
        "/setup/token",
    ])?;
    ensure!(
        install.status.success() && output_text(&install).contains("started vantage-agent.service"),
        "install.sh under systemd: {}",
        output_text(&install)
    );
    let agent = cp
        .wait_online_in("systemd", Duration::from_secs(60))
        .await
        .with_context(|| container.journal())?;
    ensure!(
        container.show("ActiveState")? == "active",
        "unit not active"
    );
    ensure!(
        container.show("UnitFileState")? == "enabled",
        "unit not enabled"
    );
    ensure!(container.show("User")? == "vantage-agent", "unit user");

    // The running process: its user, and CAP_NET_RAW as its only capability.
    let pid = container.show("MainPID")?;
    let status = container.run(&["cat", &format!("/proc/{pid}/status")])?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let uid = container.run(&["id", "-u", "vantage-agent"])?;
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
    ensure!(
        field("Uid:").split_whitespace().all(|u| u == uid),
        "not running as vantage-agent ({uid}): {status}"
    );
    let net_raw = 1u64 << 13;
    for name in ["CapEff:", "CapBnd:", "CapAmb:"] {
        let caps = u64::from_str_radix(&field(name), 16).with_context(|| status.clone())?;
        ensure!(
            caps == net_raw,
            "{name} {caps:#x}, wanted only CAP_NET_RAW: {status}"
        );
    }
    ensure!(field("NoNewPrivs:") == "1", "NoNewPrivs: {status}");

    // A crash is followed by a restart (Restart=always), and the agent is back.
    let killed = container.run(&["kill", "-9", &pid])?;
    ensure!(killed.status.success(), "{}", output_text(&killed));
    wait_for(
        "systemd to restart the agent",
        Duration::from_secs(30),
        || async {
            let now = container.show("MainPID").ok()?;
            (now != pid && now != "0").then_some(())
        },
    )
    .await?;
    let again = cp
        .wait_online_in("systemd", Duration::from_secs(60))
        .await
        .with_context(|| container.journal())?;
    ensure!(again["id"] == agent["id"], "a restart changed the identity");

    // Uninstall stops the service and removes the unit.
    let uninstall = container.run(&["sh", "/dist/install.sh", "--uninstall", "--purge"])?;
    ensure!(uninstall.status.success(), "{}", output_text(&uninstall));
    let gone = container.run(&["systemctl", "cat", "vantage-agent"])?;
    ensure!(!gone.status.success(), "the unit is still there");
    let id = agent["id"].as_str().context("id")?.to_owned();
    cp.wait_agent_state(&id, "offline", Duration::from_secs(60))
        .await?;
    Ok(())
}
