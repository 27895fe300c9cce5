//! A PostgreSQL cluster of one test's own, for tests that stop and start the server itself
//! (the suite's shared cluster, from `scripts/lib/postgres.sh`, serves every other test and
//! must stay up). Debian's server binaries, a temporary data directory, a free loopback port.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

/// A running cluster; stopped (immediately) and removed when dropped.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a trust-auth cluster (fsync off, as the suite's).
    ///
    /// # Errors
    /// No PostgreSQL server binaries (scripts/test installs them), or initdb or the start
    /// failed.
    pub fn start() -> anyhow::Result<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("no /usr/lib/postgresql: scripts/test installs PostgreSQL")?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .context("no PostgreSQL server binaries under /usr/lib/postgresql")?;
        let dir = tempfile::Builder::new().prefix("vantage-pg-").tempdir()?;
        let cluster = PrivatePostgres {
            bin,
            dir,
            port: crate::free_port(),
        };
        if as_root() {
            let _ = Command::new("useradd")
                .args(["--system", "--no-create-home", "postgres"])
                .output();
            run(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path()))?;
            run(Command::new("chmod").arg("755").arg(cluster.dir.path()))?;
        }
        cluster.run_pg(&[
            "initdb",
            "-D",
            &cluster.data().display().to_string(),
            "-U",
            "vantage",
            "--auth=trust",
            "-E",
            "UTF8",
        ])?;
        cluster.start_again()?;
        Ok(cluster)
    }

    /// The admin URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://vantage@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once, as a crash would: connections are cut mid-transaction and
    /// the next start replays the WAL.
    ///
    /// # Errors
    /// pg_ctl failed.
    pub fn stop_immediately(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "stop"])
    }

    /// Starts the stopped server on the same port and waits until it accepts connections.
    ///
    /// # Errors
    /// pg_ctl failed.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.pg_ctl(&[
            "-l",
            &self.dir.path().join("log").display().to_string(),
            "-w",
            "-o",
            &options,
            "start",
        ])
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let data = self.data().display().to_string();
        let mut all = vec!["pg_ctl", "-D", &data];
        all.extend_from_slice(args);
        self.run_pg(&all)
    }

    /// Runs one of the server's programs, as the postgres user when this is root (the server
    /// refuses to run as root).
    fn run_pg(&self, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(args[0]);
        let mut command = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(&args[1..]);
        run(&mut command).with_context(|| format!("{} {:?}", program.display(), &args[1..]))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop_immediately();
    }
}

/// Whether this process runs as root (its real user id, from /proc).
fn as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok())
        })
        == Some(0)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "exit {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
