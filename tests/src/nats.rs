//! A three-node nats-server cluster on loopback for the external-broker tests: each node
//! speaks NATS and MQTT over mutual TLS with the certificates `vantage broker-config`
//! wrote, includes its `vantage-auth.conf`, and clusters with the others over plain routes.
//!
//! The binary comes from `VANTAGE_TEST_NATS_SERVER` (scripts/lib/nats.sh installs
//! nats-server 2.15 there); without it the tests fail, never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::free_port;

/// One node's ports.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub client: u16,
    pub cluster: u16,
    pub mqtt: u16,
}

/// A running cluster; its processes are killed on drop.
pub struct NatsCluster {
    pub dir: PathBuf,
    pub nodes: Vec<NodePorts>,
    children: Vec<Option<Child>>,
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The nats-server binary.
///
/// # Errors
/// `VANTAGE_TEST_NATS_SERVER` is unset or does not run.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("VANTAGE_TEST_NATS_SERVER").context(
        "VANTAGE_TEST_NATS_SERVER is not set: run the tests through scripts/test, which installs nats-server",
    )?;
    let output = Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", Path::new(&path).display()))?;
    anyhow::ensure!(output.status.success(), "nats-server --version failed");
    Ok(PathBuf::from(path))
}

impl NatsCluster {
    /// Writes the broker config from a control plane's data dir (`vantage broker-config
    /// --data-dir data_dir --out broker_dir`, plus `extra_args`), starts a 3-node cluster on
    /// it, and returns it with the environment that points a control plane at it
    /// (`VANTAGE_BROKER_NATS_URLS` and `VANTAGE_BROKER_MQTT_ADDRS`).
    ///
    /// # Errors
    /// `broker-config` fails or the cluster does not come up.
    pub fn for_control_plane(
        data_dir: &Path,
        broker_dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<(NatsCluster, Vec<(&'static str, String)>)> {
        let output = Command::new(crate::bin("vantage"))
            .arg("broker-config")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--out")
            .arg(broker_dir)
            .args(extra_args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "broker-config failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut cluster = NatsCluster::plan(broker_dir, 3);
        cluster.start()?;
        let env = vec![
            ("VANTAGE_BROKER_NATS_URLS", cluster.client_urls()),
            ("VANTAGE_BROKER_MQTT_ADDRS", cluster.mqtt_addrs()),
        ];
        Ok((cluster, env))
    }

    /// Picks ports for `n` nodes whose files (`vantage-auth.conf`, `ca.pem`, `broker.pem`,
    /// `broker.key`) are in `dir`; [`Self::start`] runs them.
    pub fn plan(dir: &Path, n: usize) -> NatsCluster {
        let nodes = (0..n)
            .map(|_| NodePorts {
                client: free_port(),
                cluster: free_port(),
                mqtt: free_port(),
            })
            .collect();
        NatsCluster {
            dir: dir.to_owned(),
            nodes,
            children: (0..n).map(|_| None).collect(),
        }
    }

    /// The client URLs, comma-separated (what `VANTAGE_BROKER_NATS_URLS` takes).
    pub fn client_urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("tls://127.0.0.1:{}", node.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The MQTT listeners, comma-separated (what `VANTAGE_BROKER_MQTT_ADDRS` takes).
    pub fn mqtt_addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.mqtt))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Writes every node's config and starts them all, listening on every port. A port
    /// another process took since it was picked (ports are picked free, then released) ends
    /// its node at start: the whole cluster then starts again on new ports, up to 5 times.
    ///
    /// # Errors
    /// A config cannot be written, a process not started, or no attempt came up.
    pub fn start(&mut self) -> anyhow::Result<()> {
        for attempt in 0..5 {
            if attempt > 0 {
                for index in 0..self.nodes.len() {
                    self.kill_node(index);
                    let _ = std::fs::remove_dir_all(self.dir.join(format!("n{index}")));
                }
                *self = NatsCluster::plan(&self.dir, self.nodes.len());
            }
            for index in 0..self.nodes.len() {
                self.start_node(index)?;
            }
            if self.all_listening()? {
                return Ok(());
            }
        }
        anyhow::bail!(
            "the cluster did not come up in 5 attempts:\n{}",
            self.log_tail()
        )
    }

    /// Waits up to 10 s until every node listens on all its ports; false when one died.
    fn all_listening(&mut self) -> anyhow::Result<bool> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut ready = 0;
            for index in 0..self.nodes.len() {
                if let Some(child) = self.children[index].as_mut()
                    && child.try_wait()?.is_some()
                {
                    return Ok(false);
                }
                let log = std::fs::read_to_string(self.dir.join(format!("n{index}.log")))
                    .unwrap_or_default();
                if log.contains("Listening for route connections") {
                    ready += 1;
                }
            }
            if ready == self.nodes.len() {
                return Ok(true);
            }
            if std::time::Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// (Re)starts node `index` with its config.
    ///
    /// # Errors
    /// The config cannot be written or the process not started.
    pub fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let binary = server_binary()?;
        let node = self.nodes[index];
        let dir = &self.dir;
        let tls = format!(
            "tls {{\n    cert_file: \"{d}/broker.pem\"\n    key_file: \"{d}/broker.key\"\n    ca_file: \"{d}/ca.pem\"\n    verify: true\n  }}",
            d = dir.display()
        );
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, other)| format!("nats-route://127.0.0.1:{}", other.cluster))
            .collect();
        let config = format!(
            "server_name: n{index}\n\
             listen: 127.0.0.1:{client}\n\
             jetstream {{ store_dir: \"{d}/n{index}\", max_memory_store: 256MB, max_file_store: 4GB }}\n\
             cluster {{\n  name: vantage\n  listen: 127.0.0.1:{cluster}\n  routes: [ {routes} ]\n}}\n\
             {tls}\n\
             mqtt {{\n  listen: 127.0.0.1:{mqtt}\n  stream_replicas: 3\n  {tls}\n}}\n\
             include ./vantage-auth.conf\n",
            client = node.client,
            cluster = node.cluster,
            mqtt = node.mqtt,
            d = dir.display(),
            routes = routes.join(", "),
        );
        let config_path = dir.join(format!("n{index}.conf"));
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join(format!("n{index}.log")))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start nats-server")?;
        self.children[index] = Some(child);
        Ok(())
    }

    /// The process ids of the nodes running now.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Kills node `index` with SIGKILL.
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `n` warnings and errors (`[WRN]`, `[ERR]`) of the nodes' logs, each with its
    /// node.
    pub fn warnings(&self, n: usize) -> Vec<String> {
        let lines: Vec<String> = (0..self.nodes.len())
            .flat_map(|index| {
                std::fs::read_to_string(self.dir.join(format!("n{index}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter(|line| line.contains("[WRN]") || line.contains("[ERR]"))
                    .map(|line| format!("n{index} {line}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// The last lines of every node's log.
    pub fn log_tail(&self) -> String {
        (0..self.nodes.len())
            .map(|index| {
                let text = std::fs::read_to_string(self.dir.join(format!("n{index}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- n{index}\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
