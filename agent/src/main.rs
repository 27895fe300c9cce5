//! `vantage-agent`: the node agent.
//!
//! Reads one TOML file (default `/etc/vantage/agent.toml`, `--config` overrides; see the
//! `config` module for every key and the `VANTAGE_AGENT_*` variables). `run` (the default)
//! enrolls on first start when an `enrollment_token` is configured, keeps its identity,
//! spool and last desired config in `state_dir`, then holds one MQTT-over-TLS session to the
//! control plane: it sends hello, status, heartbeats, host metrics and check results, and
//! runs the checks the control plane assigns. `enroll` only enrolls. `RUST_LOG` sets the log
//! filter; logs go to stderr.

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
}

fn main() {
    // `RUST_LOG` in the `info,vantage_agent=debug` form: levels per target, no regexes, so
    // the agent does not carry a regex engine for its log filter.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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
        let config = AgentConfig::load(&cli.config)?;
        match cli.command.unwrap_or(Cmd::Run) {
            Cmd::Run => vantage_agent::session::run(config).await,
            Cmd::Enroll => {
                let identity = vantage_agent::session::identity(&config).await?;
                println!("{}", identity.agent_id);
                Ok(())
            }
        }
    });
    if let Err(error) = outcome {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
