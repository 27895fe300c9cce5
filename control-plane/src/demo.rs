//! `vantage demo`: a complete local fleet in one command.
//!
//! Starts a control plane on its embedded defaults (SQLite, embedded broker) in a fresh data
//! dir on free loopback ports, a local HTTP target and a TCP target, three agents (us-east,
//! europe, asia) as real child processes that enroll with one-time tokens, and checks on the
//! targets. Prints the API URL, an admin token and the live feed URL, and writes the same as
//! `KEY=value` lines to `demo.env` in the data dir. Ctrl-C stops everything.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::app::{ADMIN_TOKEN_FILE, Application};
use crate::settings::Settings;

/// Regions of the demo fleet.
pub const DEMO_REGIONS: [&str; 3] = ["us-east", "europe", "asia"];

const MARKER: &str = ".vantage-demo";

/// Flags of `vantage demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Data dir for the demo; wiped first if an earlier demo made it.
    #[arg(long, default_value = "vantage-demo")]
    pub data_dir: PathBuf,
    /// Path of the agent binary (default: `vantage-agent` beside this binary).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Host metrics interval of the demo agents, in seconds.
    #[arg(long, default_value_t = 5)]
    pub metrics_interval_s: u32,
    /// Exit after this many seconds instead of waiting for Ctrl-C (0 = wait).
    #[arg(long, default_value_t = 0)]
    pub exit_after_s: u64,
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            anyhow::bail!(
                "{} exists and was not made by `vantage demo`; pass --data-dir with a new path",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "made by vantage demo\n")?;
    Ok(())
}

fn agent_binary(args: &DemoArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.agent_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary has no parent dir")?
            .join("vantage-agent"),
    };
    anyhow::ensure!(
        path.exists(),
        "agent binary {} not found: build the workspace first (cargo build --release)",
        path.display()
    );
    Ok(path)
}

/// Writes a file only its owner can read: it holds a token.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    vantage_agent::files::write_atomic(path, contents.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A tiny HTTP/1.1 target that answers 200 to everything.
async fn http_target() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let body = "vantage demo target\n";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// A TCP target that accepts and closes.
async fn tcp_target() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    Ok(port)
}

/// Runs the demo until Ctrl-C.
///
/// # Errors
/// Start-up failures.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let agent_bin = agent_binary(&args)?;
    prepare_dir(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let mut settings = Settings::ephemeral(data_dir.clone());
    settings.metrics_interval_s = args.metrics_interval_s;
    settings.heartbeat_interval_s = 5;
    let app = Application::build(settings).await?;
    let state = app.state().clone();
    let api_url = format!("https://127.0.0.1:{}", app.http_port());
    let admin_token = std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE))?
        .trim()
        .to_owned();

    let http_port = http_target().await?;
    let tcp_port = tcp_target().await?;
    let regions: Vec<String> = DEMO_REGIONS.iter().map(|r| (*r).to_owned()).collect();
    let checks = [
        serde_json::json!({"id": "demo-http", "name": "Demo HTTP target", "interval_s": 10, "timeout_ms": 3000,
            "kind": {"type": "http", "url": format!("http://127.0.0.1:{http_port}/")}, "regions": regions, "quorum": 2}),
        serde_json::json!({"id": "demo-tcp", "name": "Demo TCP target", "interval_s": 10, "timeout_ms": 3000,
            "kind": {"type": "tcp", "host": "127.0.0.1", "port": tcp_port}, "regions": regions, "quorum": 2}),
    ];
    for check in checks {
        let body: crate::checks::CheckDefinition = serde_json::from_value(check)?;
        crate::checks::create(&state, body).await?;
    }

    let mut children: Vec<Child> = Vec::new();
    for region in DEMO_REGIONS {
        let (_, token) = state
            .store
            .create_enrollment_token(region, &Default::default(), 1, 3600)
            .await?;
        let agent_dir = data_dir.join("agents").join(region);
        std::fs::create_dir_all(&agent_dir)?;
        let config_path = agent_dir.join("agent.toml");
        let config = format!(
            "server_url = \"{api_url}\"\nenrollment_token = \"{token}\"\nca_file = \"{}\"\nstate_dir = \"{}\"\n\n[labels]\ndemo = \"true\"\n",
            data_dir.join("pki").join("ca.pem").display(),
            agent_dir.join("state").display(),
        );
        write_private(&config_path, &config)?;
        let log = std::fs::File::create(agent_dir.join("agent.log"))?;
        let child = Command::new(&agent_bin)
            .arg("--config")
            .arg(&config_path)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", agent_bin.display()))?;
        children.push(child);
    }

    let live_url = format!("{api_url}/api/v1/live");
    let env_text = format!(
        "VANTAGE_API_URL={api_url}\nVANTAGE_ADMIN_TOKEN={admin_token}\nVANTAGE_LIVE_URL={live_url}\nVANTAGE_MQTT_ADDR=127.0.0.1:{}\nVANTAGE_CA_FILE={}\nVANTAGE_DATA_DIR={}\n",
        app.mqtt_port(),
        data_dir.join("pki").join("ca.pem").display(),
        data_dir.display()
    );
    write_private(&data_dir.join("demo.env"), &env_text)?;
    println!("Vantage demo fleet is starting: 3 agents (us-east, europe, asia), 2 checks.\n");
    print!("{env_text}");
    println!(
        "\nTry:\n  curl --cacert {ca} -H \"Authorization: Bearer $VANTAGE_ADMIN_TOKEN\" $VANTAGE_API_URL/api/v1/agents\n  curl -N --cacert {ca} -H \"Authorization: Bearer $VANTAGE_ADMIN_TOKEN\" $VANTAGE_LIVE_URL\n(source {env} first). Ctrl-C stops everything.",
        ca = data_dir.join("pki").join("ca.pem").display(),
        env = data_dir.join("demo.env").display(),
    );

    let exit_after = args.exit_after_s;
    app.run_until(async move {
        let timer = async {
            if exit_after > 0 {
                tokio::time::sleep(Duration::from_secs(exit_after)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = timer => {}
            () = crate::cli::shutdown_signal() => {}
        }
    })
    .await;
    for child in &mut children {
        let _ = child.kill().await;
    }
    Ok(())
}
