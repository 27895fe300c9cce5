//! `vantage-agent`: the node agent.
//!
//! Reads one TOML file (default `/etc/vantage/agent.toml`, `--config` overrides; see the
//! `config` module for every key and the `VANTAGE_AGENT_*` variables). `run` (the default)
//! enrolls on first start when an `enrollment_token` is configured, keeps its identity,
//! spool and last desired config in `state_dir`, then holds one MQTT-over-TLS session to the
//! control plane: it sends hello, status, heartbeats, host metrics and check results, and
//! runs the checks the control plane assigns. With a `[zabbix_sender]` table it also sends
//! each host-metrics sample to a Zabbix server or proxy as trapper items (the template to
//! link is `provision/zabbix/vantage_agent_template.yaml`). `enroll` only enrolls. `probe`
//! runs one check given on the command line and prints its outcome as JSON (exit 0 up, 2
//! down); `metrics` prints one host-metrics sample. Neither needs a config or a control
//! plane: operators use them to debug a check on the node, and the image build runs them as
//! its smoke test.
//! `RUST_LOG` sets the log filter; logs go to stderr.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use vantage_agent::config::{AgentConfig, DEFAULT_PATH};

#[derive(Debug, Parser)]
#[command(name = "vantage-agent", version, about = "Vantage node agent")]
struct Cli {
    /// Config file.
    #[arg(long, short, env = "VANTAGE_AGENT_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enroll (if needed) and run until stopped.
    Run,
    /// Enroll with the configured token and exit.
    Enroll,
    /// Run one check now and print its outcome as JSON; exit 0 when up, 2 when down.
    Probe {
        /// The check, as in the API: `{"type":"http","url":"https://example.net"}`; `-` reads
        /// it from stdin, which keeps headers, bodies and keyed RPC URLs out of the process
        /// list.
        check: String,
        /// Whole-check timeout, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u32,
    },
    /// Print one host-metrics sample as JSON.
    Metrics,
}

fn main() {
    // `RUST_LOG` in the `info,vantage_agent=debug` form: levels per target, no regexes, so
    // the agent does not carry a regex engine for its log filter.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only on a terminal, not in log files or the journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .try_init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command.unwrap_or(Cmd::Run) {
            Cmd::Run => vantage_agent::session::run(AgentConfig::load(&cli.config)?).await,
            Cmd::Enroll => {
                let config = AgentConfig::load(&cli.config)?;
                let identity = vantage_agent::session::identity(&config).await?;
                println!("{}", identity.agent_id);
                Ok(())
            }
            Cmd::Probe { check, timeout_ms } => probe_once(&check, timeout_ms).await,
            Cmd::Metrics => metrics_once().await,
        }
    });
    if let Err(error) = outcome {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// `probe`: validates and runs one check, prints the outcome, exits 2 when it is down.
async fn probe_once(text: &str, timeout_ms: u32) -> anyhow::Result<()> {
    let text = if text == "-" {
        let mut input = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), 1024 * 1024),
            &mut input,
        )
        .map_err(|error| anyhow::anyhow!("cannot read the check from stdin: {error}"))?;
        input
    } else {
        text.to_owned()
    };
    let kind: vantage_mqtt::CheckKind =
        serde_json::from_str(&text).map_err(|error| anyhow::anyhow!("invalid check: {error}"))?;
    vantage_agent::probe::validate(&kind)
        .map_err(|error| anyhow::anyhow!("invalid check: {error}"))?;
    if timeout_ms == 0 {
        anyhow::bail!("--timeout-ms must be at least 1");
    }
    let spec = vantage_mqtt::CheckSpec {
        id: "cli".into(),
        interval_s: 0,
        timeout_ms,
        kind,
    };
    let outcome = vantage_agent::probe::run_check(&spec).await;
    let json = serde_json::json!({
        "ok": outcome.ok,
        "reason": outcome.reason,
        "status_code": outcome.status_code,
        "timings": outcome.timings,
        "values": outcome.values,
    });
    println!("{json}");
    if !outcome.ok {
        std::process::exit(2);
    }
    Ok(())
}

/// `metrics`: one host-metrics sample (two readings 250 ms apart, for CPU usage).
async fn metrics_once() -> anyhow::Result<()> {
    let mut collector = vantage_agent::metrics::Collector::new(false);
    let _ = collector.sample(0, vantage_agent::now_ms());
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let sample = collector.sample(1, vantage_agent::now_ms());
    println!("{}", serde_json::to_string(&sample)?);
    Ok(())
}
