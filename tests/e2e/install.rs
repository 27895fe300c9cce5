//! Installing agents on nodes: `vantage cloud-init` user-data (checked by Debian's
//! `cloud-init schema`, then carried out on a node) and `provision/ssh-install` over a real
//! sshd, both ending with the agent online at the test's control plane; install.sh's refusals
//! (bad signature, wrong architecture, used token) and its uninstall path.
//!
//! The "node" is this machine seen through a network namespace the test creates: sshd runs
//! inside it, so everything started over SSH (install.sh, the agent under plain init, since
//! systemd is not PID 1 here) reaches the control plane only across a veth pair. The install
//! is real (/usr/local/bin, /etc/vantage, /var/lib/vantage-agent, a system user), so one test
//! does all of it in sequence and uninstalls at the end. The artifacts come from image/build
//! (`$VANTAGE_DIST_DIR`, default `dist/`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use vantage_tests::{Backend, ControlPlane, TestStore, output_text, wait_for};

/// image/build's output.
pub fn dist_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("VANTAGE_DIST_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist"),
        PathBuf::from,
    );
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no artifacts at {}: run image/build first", dir.display()))?;
    for name in ["install.sh", "SHA256SUMS", "SHA256SUMS.sig", "release.pub"] {
        ensure!(
            dir.join(name).exists(),
            "{} has no {name}: run image/build first",
            dir.display()
        );
    }
    Ok(dir)
}

fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    Ok(output)
}

fn sh(script: &str) -> anyhow::Result<()> {
    let output = run(Command::new("sh").arg("-c").arg(script))?;
    ensure!(
        output.status.success(),
        "{script}: {}",
        output_text(&output)
    );
    Ok(())
}

/// A host reachable only over a veth pair, running sshd.
struct Node {
    ns: String,
    host_ip: String,
    dir: tempfile::TempDir,
    sshd: Option<Child>,
}

impl Node {
    fn start() -> anyhow::Result<Node> {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let subnet = 1 + (rand::random::<u8>() % 250);
        let ns = format!("vti{tag}");
        let host_ip = format!("10.214.{subnet}.1");
        let node_ip = format!("10.214.{subnet}.2");
        let dir = tempfile::tempdir()?;
        let mut node = Node {
            ns: ns.clone(),
            host_ip: host_ip.clone(),
            dir,
            sshd: None,
        };
        sh(&format!(
            "ip netns add {ns} && ip link add vh{tag} type veth peer name vn{tag} && \
             ip link set vn{tag} netns {ns} && ip addr add {host_ip}/30 dev vh{tag} && \
             ip link set vh{tag} up && ip -n {ns} addr add {node_ip}/30 dev vn{tag} && \
             ip -n {ns} link set vn{tag} up && ip -n {ns} link set lo up"
        ))?;
        let d = node.dir.path().to_owned();
        sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -f {d}/host_key && ssh-keygen -q -t ed25519 -N '' -f {d}/client_key && \
             cp {d}/client_key.pub {d}/authorized_keys && mkdir -p /run/sshd",
            d = d.display()
        ))?;
        let host_pub = std::fs::read_to_string(d.join("host_key.pub"))?;
        std::fs::write(d.join("known_hosts"), format!("{node_ip} {host_pub}"))?;
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress {node_ip}\nPort 22\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
                d = d.display()
            ),
        )?;
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host node\n  HostName {node_ip}\n  User root\n  IdentityFile {d}/client_key\n  \
                 IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n",
                d = d.display()
            ),
        )?;
        let log = std::fs::File::create(d.join("sshd.log"))?;
        node.sshd = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start sshd")?,
        );
        Ok(node)
    }

    fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// Runs `script` on the node as root.
    fn ssh(&self, script: &str) -> anyhow::Result<Output> {
        run(Command::new("ssh").arg("-F").arg(self.ssh_config()).args([
            "-o",
            "BatchMode=yes",
            "node",
            script,
        ]))
    }

    async fn wait_for_sshd(&self) -> anyhow::Result<()> {
        let log = self.dir.path().join("sshd.log");
        wait_for("sshd in the namespace", Duration::from_secs(20), || async {
            self.ssh("true")
                .ok()
                .filter(|out| out.status.success())
                .map(|_| ())
        })
        .await
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())
    }

    fn ssh_install(
        &self,
        cp: &ControlPlane,
        dist: &Path,
        token: Option<&Path>,
        hosts_file: Option<&Path>,
    ) -> anyhow::Result<Output> {
        let mut command = Command::new(workspace_file("provision/ssh-install"));
        command
            .arg("--dist")
            .arg(dist)
            .args(["--server-url", &self.server_url(cp)])
            .arg("--ca-file")
            .arg(cp.data_dir.join("pki/ca.pem"))
            .arg("--ssh-config")
            .arg(self.ssh_config())
            .env_remove("VANTAGE_ENROLLMENT_TOKEN");
        if let Some(token) = token {
            command.arg("--token-file").arg(token);
        }
        match hosts_file {
            Some(file) => command.arg("--hosts").arg(file),
            None => command.arg("node"),
        };
        run(&mut command)
    }

    /// `install.sh --uninstall --purge` on the node; checks that nothing is left.
    fn uninstall_purge(&self, dist: &Path) -> anyhow::Result<()> {
        let output = self.ssh(&format!(
            "sh {}/install.sh --uninstall --purge",
            dist.display()
        ))?;
        ensure!(
            output.status.success(),
            "uninstall failed: {}",
            output_text(&output)
        );
        ensure!(uninstalled(), "uninstall left files behind");
        Ok(())
    }

    fn server_url(&self, cp: &ControlPlane) -> String {
        format!("https://{}:{}", self.host_ip, cp.http_port)
    }
}

/// Removes whatever an install put on this machine (agent, files, user), whatever state a
/// run left it in.
fn purge_machine() {
    if let Ok(dist) = dist_dir() {
        let _ = Command::new("sh")
            .arg(dist.join("install.sh"))
            .args(["--uninstall", "--purge"])
            .output();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Stop and remove whatever install.sh put in place before the namespace goes.
        purge_machine();
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Waits for an agent of `region` online; on failure, the installed agent's log says why.
async fn online_in(cp: &ControlPlane, region: &str) -> anyhow::Result<Value> {
    cp.wait_online_in(region, Duration::from_secs(60))
        .await
        .with_context(|| {
            std::fs::read_to_string("/var/log/vantage-agent.log")
                .unwrap_or_default()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        })
}

/// Nothing of an install is left: binary, config, service files, boot links, log, state.
fn uninstalled() -> bool {
    [
        "/usr/local/bin/vantage-agent",
        "/etc/vantage",
        "/etc/init.d/vantage-agent",
        "/etc/rc2.d/S01vantage-agent",
        "/etc/systemd/system/vantage-agent.service",
        "/var/log/vantage-agent.log",
        "/run/vantage-agent.pid",
        "/var/lib/vantage-agent",
    ]
    .iter()
    .all(|path| !Path::new(path).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_and_ssh_install_bring_agents_online() {
    node_install().await.unwrap();
}

async fn node_install() -> anyhow::Result<()> {
    let dist = dist_dir()?;
    // Anything left by an interrupted earlier run must not answer for this one.
    purge_machine();
    let node = Node::start()?;
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start_with(
        &store,
        &[
            ("VANTAGE_HTTP_ADDR", "0.0.0.0:0"),
            ("VANTAGE_MQTT_ADDR", "0.0.0.0:0"),
            ("VANTAGE_PUBLIC_HOST", node.host_ip.as_str()),
            ("VANTAGE_DIST_DIR", dist.to_str().context("dist path")?),
        ],
    )
    .await?;
    node.wait_for_sshd().await?;
    let work = tempfile::tempdir()?;

    // --- cloud-init ----------------------------------------------------------------------
    let server_url = node.server_url(&cp);
    let (ok, user_data, stderr) = cp.cli(&[
        "cloud-init",
        "--region",
        "cloud",
        "--server-url",
        &server_url,
        "--dist-dir",
        dist.to_str().context("dist path")?,
    ])?;
    ensure!(ok, "vantage cloud-init failed: {stderr}");
    ensure!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    let user_data_path = work.path().join("user-data");
    std::fs::write(&user_data_path, &user_data)?;
    let schema = run(Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&user_data_path))?;
    ensure!(
        schema.status.success(),
        "cloud-init schema refused the user-data: {}",
        output_text(&schema)
    );
    // The validator is real: a wrong type in the same document is refused.
    let broken = work.path().join("broken");
    std::fs::write(
        &broken,
        user_data.replace("write_files:\n", "write_files: 5\nx_files:\n"),
    )?;
    let refused = run(Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&broken))?;
    ensure!(
        !refused.status.success(),
        "cloud-init schema accepted a broken document"
    );

    // Carry it out on the node as cloud-init would: write_files, then runcmd.
    let parsed = run(Command::new("python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&user_data_path))?;
    ensure!(parsed.status.success(), "{}", output_text(&parsed));
    let doc: Value = serde_json::from_slice(&parsed.stdout)?;
    for file in doc["write_files"].as_array().context("write_files")? {
        let path = Path::new(file["path"].as_str().context("path")?);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(path, file["content"].as_str().context("content")?)?;
        let mode = u32::from_str_radix(file["permissions"].as_str().context("mode")?, 8)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    for command in doc["runcmd"].as_array().context("runcmd")? {
        let argv: Vec<&str> = command
            .as_array()
            .context("runcmd entry")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let script = argv.get(2).context("sh -c script")?;
        let output = node.ssh(&format!("sh -c {}", shell_quote(script)))?;
        ensure!(
            output.status.success(),
            "runcmd failed on the node: {}",
            output_text(&output)
        );
    }
    let cloud_agent = online_in(&cp, "cloud").await?;
    ensure!(
        !Path::new("/etc/vantage/enrollment-token").exists(),
        "the token file outlived the install"
    );
    let config = std::fs::read_to_string("/etc/vantage/agent.toml")?;
    ensure!(
        !config.contains("enrollment_token"),
        "the token stayed in the config: {config}"
    );
    node.uninstall_purge(&dist)?;
    let id = cloud_agent["id"].as_str().context("id")?.to_owned();
    cp.wait_agent_state(&id, "offline", Duration::from_secs(60))
        .await?;

    // --- ssh-install ---------------------------------------------------------------------
    let token = cp.enrollment_token("ssh", 1).await?;
    let token_file = work.path().join("token");
    std::fs::write(&token_file, format!("VANTAGE_ENROLLMENT_TOKEN={token}\n"))?;

    // A release whose SHA256SUMS was altered: refused before anything is installed.
    let bad = work.path().join("bad-dist");
    sh(&format!("cp -r {} {}", dist.display(), bad.display()))?;
    let sums = std::fs::read_to_string(bad.join("SHA256SUMS"))?;
    std::fs::write(bad.join("SHA256SUMS"), sums.replacen('0', "1", 1))?;
    let output = node.ssh_install(&cp, &bad, Some(&token_file), None)?;
    ensure!(
        !output.status.success(),
        "a bad signature was accepted: {}",
        output_text(&output)
    );
    ensure!(
        output_text(&output).contains("bad signature"),
        "{}",
        output_text(&output)
    );
    ensure!(
        uninstalled(),
        "files were installed despite a bad signature"
    );

    // A signed release whose tarball was altered afterwards: refused by its checksum.
    let altered = work.path().join("altered-dist");
    sh(&format!("cp -r {} {}", dist.display(), altered.display()))?;
    sh(&format!(
        "for f in {}/vantage-agent-*-linux.tar.gz; do printf x >> \"$f\"; done",
        altered.display()
    ))?;
    let output = node.ssh_install(&cp, &altered, Some(&token_file), None)?;
    ensure!(
        !output.status.success() && output_text(&output).contains("checksum mismatch"),
        "an altered tarball was accepted: {}",
        output_text(&output)
    );
    ensure!(
        uninstalled(),
        "files were installed from an altered tarball"
    );

    // The real thing.
    let output = node.ssh_install(&cp, &dist, Some(&token_file), None)?;
    ensure!(
        output.status.success(),
        "ssh-install failed: {}",
        output_text(&output)
    );
    ensure!(
        String::from_utf8_lossy(&output.stdout)
            .contains(&format!("node: installed ({})", std::env::consts::ARCH)),
        "{}",
        output_text(&output)
    );
    ensure!(
        !output_text(&output).contains(&token),
        "the token was printed"
    );
    let first = online_in(&cp, "ssh").await?;

    // Under plain init the agent runs as its own user and keeps CAP_NET_RAW (setpriv): it
    // pings although unprivileged ping sockets are off in the node's namespace ("1 0").
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            serde_json::json!({"id": "ping-host", "name": "ping", "interval_s": 2,
                "timeout_ms": 2000, "regions": ["ssh"],
                "kind": {"type": "icmp", "host": node.host_ip, "count": 1}}),
        )
        .await?;
    ensure!(status == 201, "{status} {body}");
    let ping = wait_for(
        "an ICMP result from the installed agent",
        Duration::from_secs(30),
        || async {
            let (_, rows) = cp.get("/api/v1/results?check=ping-host").await.ok()?;
            rows.as_array()?.first().cloned()
        },
    )
    .await?;
    ensure!(
        ping["ok"] == true,
        "the installed agent cannot ping: {ping}"
    );
    let (status, _) = cp
        .request(
            reqwest::Method::DELETE,
            "/api/v1/checks/ping-host",
            Some(&cp.admin_token),
            None,
        )
        .await?;
    ensure!(status == 204, "check deletion: {status}");
    let meta = std::fs::metadata("/var/lib/vantage-agent")?;
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777 == 0o700,
        "state dir is not private"
    );

    // The packaged unit (systemd is not PID 1 here, so it is checked, not run): it must pass
    // `systemd-analyze verify` now that its binary is installed, and stay hardened.
    let unit = work.path().join("vantage-agent.service");
    sh(&format!(
        "tar -xzf {d}/vantage-agent-*-{arch}-linux.tar.gz -O --wildcards '*/vantage-agent.service' > {u}",
        d = dist.display(),
        arch = std::env::consts::ARCH,
        u = unit.display()
    ))?;
    let verify = run(Command::new("systemd-analyze").arg("verify").arg(&unit))?;
    ensure!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        output_text(&verify)
    );
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit))?;
    let report = output_text(&security);
    let exposure: f64 = report
        .split("Overall exposure level for vantage-agent.service: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .with_context(|| report.clone())?;
    ensure!(
        exposure <= 2.5,
        "the unit's exposure grew to {exposure}: {report}"
    );

    // Again, with no token: an enrolled node keeps its identity.
    // From a host list, with a host that cannot be reached: the node is still done, the
    // run fails, and the summary names each host.
    let hosts = work.path().join("hosts");
    std::fs::write(&hosts, "# fleet\nnode\n\nno-such-host.invalid  # gone\n")?;
    let output = node.ssh_install(&cp, &dist, None, Some(&hosts))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.code() == Some(1)
            && stdout.contains("node: installed")
            && stdout.contains("no-such-host.invalid: FAILED: cannot reach"),
        "{}",
        output_text(&output)
    );
    let again = online_in(&cp, "ssh").await?;
    ensure!(
        first["id"] == again["id"],
        "re-install changed the identity: {first} vs {again}"
    );
    let (_, agents) = cp.get("/api/v1/agents").await?;
    let in_region = agents
        .as_array()
        .context("agents")?
        .iter()
        .filter(|a| a["region"] == "ssh")
        .count();
    ensure!(
        in_region == 1,
        "re-install enrolled a second agent: {agents}"
    );

    // The wrong architecture is refused.
    let output = node.ssh(&format!(
        "sh {d}/install.sh --arch {other} --artifacts {d} --server-url {server_url} --ca-file /etc/vantage/ca.pem",
        d = dist.display(),
        other = if std::env::consts::ARCH == "aarch64" { "x86_64" } else { "aarch64" },
    ))?;
    ensure!(!output.status.success(), "a wrong --arch was accepted");
    ensure!(
        output_text(&output).contains("wrong architecture"),
        "{}",
        output_text(&output)
    );

    // Purge, then the used-up token is refused and the node is left as it was.
    node.uninstall_purge(&dist)?;
    let output = node.ssh_install(&cp, &dist, Some(&token_file), None)?;
    ensure!(
        !output.status.success(),
        "a used token was accepted: {}",
        output_text(&output)
    );
    ensure!(
        output_text(&output).contains("enrollment failed")
            && output_text(&output).contains("no uses left"),
        "{}",
        output_text(&output)
    );
    ensure!(uninstalled(), "a refused enrollment left files behind");
    ensure!(
        !Path::new("/var/lib/vantage-agent").exists(),
        "a refused enrollment left a state dir"
    );
    let user = run(Command::new("id").arg("vantage-agent"))?;
    ensure!(
        !user.status.success(),
        "a refused enrollment left the service user"
    );
    Ok(())
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
