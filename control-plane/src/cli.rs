//! The `vantage` command line: `serve`, `migrate`, `demo`, and fleet management commands.
//! Tokens, agents, regions and incident listings work directly on the store (so they work
//! with or without a running server; a running server picks up revocations within two
//! seconds). What must be announced or validated by the server (acknowledging and annotating
//! incidents, channels, maintenance windows, rules) goes through its API
//! ([`crate::apiclient`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::apiclient::{ApiArgs, ApiClient};
use crate::settings::{Secret, Settings};
use crate::store::{Role, Store};

/// Vantage control plane.
#[derive(Debug, Parser)]
#[command(name = "vantage", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the store is, for the commands that only need the store.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    #[arg(long, env = "VANTAGE_DATA_DIR", default_value = "vantage-data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "DATABASE_URL", value_parser = |s: &str| Ok::<_, String>(Secret(s.to_owned())), hide_env_values = true)]
    pub database_url: Option<Secret>,
}

impl StoreArgs {
    async fn open(&self) -> anyhow::Result<Store> {
        std::fs::create_dir_all(&self.data_dir)?;
        let store = Store::connect(
            self.database_url.as_ref().map(|s| s.0.as_str()),
            &self.data_dir,
        )
        .await
        .context("cannot open the store")?;
        store.migrate().await.context("migrations failed")?;
        Ok(store)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: API, MQTT front door, embedded broker, ingest.
    Serve(Settings),
    /// Apply database migrations and exit.
    Migrate(StoreArgs),
    /// Start a local demo fleet: a control plane, three agents in three regions, targets.
    Demo(crate::demo::DemoArgs),
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// API tokens.
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCommand),
    /// Agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Regions: agents, online count, assigned checks, and whether checks run on the
    /// control plane's fallback (no agent online, or the online ones are full).
    Regions(StoreArgs),
    /// Incidents, newest first; `show`, `ack` and `note` one (through the API).
    Incidents {
        /// Only the open ones.
        #[arg(long)]
        open: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: Option<IncidentCommand>,
    },
    /// Notification channels (through the API; secrets are never printed).
    #[command(subcommand)]
    Channels(ChannelCommand),
    /// Maintenance windows (through the API).
    #[command(subcommand)]
    Maintenance(DefinitionCommand),
    /// Host-metric rules (through the API).
    #[command(subcommand)]
    Rules(DefinitionCommand),
    /// Checks' uptime and latency (through the API).
    #[command(subcommand)]
    Checks(ChecksCommand),
    /// A check's latency and failures per region over a range, in steps (through the API).
    Series {
        check: String,
        /// How far back from now (`90m`, `24h`, `30d`).
        #[arg(long, default_value = "24h", value_parser = parse_duration_s)]
        range: i64,
        /// Width of a point (`1m`, `1h`); default: the range in about 200 points.
        #[arg(long, value_parser = parse_duration_s)]
        step: Option<i64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Back up the store and the CA into a new directory while the server runs (SQLite
    /// with `VACUUM INTO`; for PostgreSQL it saves the CA and prints the `pg_dump` line).
    Backup {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Restore a backup into an empty data dir (the server stopped); agents come back
    /// online with their certificates, without enrolling again.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long, env = "VANTAGE_DATA_DIR", default_value = "vantage-data")]
        data_dir: PathBuf,
    },
    /// Print #cloud-config user-data that installs and enrolls an agent on a new node, with
    /// a fresh limited enrollment token and the CA and release key pinned.
    #[command(name = "cloud-init")]
    CloudInit(CloudInitArgs),
    /// Write what the nodes of an external NATS broker cluster need from Vantage into a
    /// directory: `vantage-auth.conf` (accounts and the auth callout, to include from each
    /// node's config), `ca.pem`, and `broker.pem`/`broker.key` (a server certificate from
    /// Vantage's CA for `--name`s). Run it in the data dir of any replica.
    #[command(name = "broker-config")]
    BrokerConfig {
        #[arg(long)]
        out: PathBuf,
        /// Host names or addresses the nodes are reached at (repeat the flag).
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long, env = "VANTAGE_DATA_DIR", default_value = "vantage-data")]
        data_dir: PathBuf,
    },
}

/// `vantage checks <action>`.
#[derive(Debug, Subcommand)]
pub enum ChecksCommand {
    /// Uptime over 24 h, 7 d, 30 d and 90 d of the named checks (default: every check),
    /// overall and per region.
    Uptime {
        checks: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `vantage incidents <action>`.
#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// The incident and its timeline.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Acknowledges it (reminders stop).
    Ack {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Adds a note to its timeline.
    Note {
        id: String,
        #[arg(long)]
        text: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `vantage channels <action>`.
#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// One JSON line per channel, without secrets.
    List(ApiArgs),
    /// Creates a channel from its JSON definition (the API's body; `-` reads
    /// stdin), so secrets stay out of argv.
    Create {
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    Delete {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Sends a test notification now.
    Test {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `vantage maintenance|rules <action>`.
#[derive(Debug, Subcommand)]
pub enum DefinitionCommand {
    /// One JSON line per definition.
    List(ApiArgs),
    /// Creates one from its JSON definition (the API's body; `-` reads stdin).
    Create {
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    Delete {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Reads a JSON definition from a file, or stdin for `-`.
fn read_definition(file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

/// Prints each item of a JSON array as one line.
fn print_lines(list: &serde_json::Value) {
    for item in list.as_array().into_iter().flatten() {
        println!("{item}");
    }
}

/// Lists, creates or deletes the definitions under `/api/v1/{collection}`.
async fn definitions(collection: &str, command: DefinitionCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        DefinitionCommand::List(api) => {
            let list = ApiClient::connect(&api)?
                .call(Method::GET, &format!("/{collection}"), None)
                .await?;
            print_lines(&list);
        }
        DefinitionCommand::Create { file, api } => {
            let body = read_definition(&file)?;
            let created = ApiClient::connect(&api)?
                .call(Method::POST, &format!("/{collection}"), Some(&body))
                .await?;
            println!("{created}");
        }
        DefinitionCommand::Delete { id, api } => {
            ApiClient::connect(&api)?
                .call(Method::DELETE, &format!("/{collection}/{id}"), None)
                .await?;
            println!("{id} deleted");
        }
    }
    Ok(())
}

/// `vantage incidents show|ack|note`.
/// Percent with three decimals, or `-` without results.
fn percent(value: &serde_json::Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |p| format!("{p:.3}%"))
}

async fn uptime(checks: Vec<String>, api: ApiArgs) -> anyhow::Result<()> {
    let path = if checks.is_empty() {
        "/uptime".to_owned()
    } else {
        format!("/uptime?checks={}", checks.join(","))
    };
    let answer = ApiClient::connect(&api)?
        .call(reqwest::Method::GET, &path, None)
        .await?;
    let windows = crate::rollup::UPTIME_WINDOWS.map(|w| w.name);
    println!("CHECK\tREGION\t{}", windows.join("\t"));
    for check in answer.as_array().into_iter().flatten() {
        let id = check["check_id"].as_str().unwrap_or_default();
        let row = |pick: &dyn Fn(&serde_json::Value) -> serde_json::Value| {
            windows
                .iter()
                .map(|w| percent(&pick(&check["windows"][w])))
                .collect::<Vec<_>>()
                .join("\t")
        };
        println!("{id}\t*\t{}", row(&|w| w["uptime_pct"].clone()));
        let regions: Vec<String> = check["windows"]["90d"]["regions"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for region in regions {
            println!(
                "{id}\t{region}\t{}",
                row(&|w| w["regions"][&region]["uptime_pct"].clone())
            );
        }
    }
    Ok(())
}

async fn series(
    check: String,
    range_s: i64,
    step_s: Option<i64>,
    api: ApiArgs,
) -> anyhow::Result<()> {
    let to_ms = crate::store::now_ms();
    let mut path = format!(
        "/checks/{check}/series?from_ms={}&to_ms={to_ms}",
        to_ms - range_s * 1000
    );
    if let Some(step) = step_s {
        path.push_str(&format!("&step_ms={}", step * 1000));
    }
    let answer = ApiClient::connect(&api)?
        .call(reqwest::Method::GET, &path, None)
        .await?;
    println!(
        "# {} from {} data, step {} ms",
        answer["check_id"].as_str().unwrap_or_default(),
        answer["source"].as_str().unwrap_or_default(),
        answer["step_ms"]
    );
    println!("REGION\tT_MS\tRESULTS\tFAILURES\tAVG_MS\tP50_MS\tP95_MS\tP99_MS\tMAX_MS");
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
    };
    for (region, points) in answer["regions"].as_object().into_iter().flatten() {
        for p in points.as_array().into_iter().flatten() {
            println!(
                "{region}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                p["t_ms"],
                p["results"],
                p["failures"],
                ms(&p["avg_ms"]),
                ms(&p["p50_ms"]),
                ms(&p["p95_ms"]),
                ms(&p["p99_ms"]),
                ms(&p["max_ms"])
            );
        }
    }
    Ok(())
}

async fn incident(command: IncidentCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        IncidentCommand::Show { id, api } => {
            let answer = ApiClient::connect(&api)?
                .call(Method::GET, &format!("/incidents/{id}"), None)
                .await?;
            let incident = &answer["incident"];
            println!(
                "{}\t{}:{}\t{}\t{}",
                incident["id"].as_str().unwrap_or_default(),
                incident["subject"].as_str().unwrap_or_default(),
                incident["subject_id"].as_str().unwrap_or_default(),
                if incident["open"].as_bool() == Some(true) {
                    "open"
                } else {
                    "resolved"
                },
                incident["title"].as_str().unwrap_or_default()
            );
            println!("AT_MS\tCHANGE\tAUTHOR\tTEXT");
            for event in answer["timeline"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}",
                    event["at_ms"],
                    event["change"].as_str().unwrap_or_default(),
                    event["author"].as_str().unwrap_or_default(),
                    event["text"].as_str().unwrap_or_default()
                );
            }
        }
        IncidentCommand::Ack { id, api } => {
            ApiClient::connect(&api)?
                .call(
                    Method::POST,
                    &format!("/incidents/{id}/ack"),
                    Some(&serde_json::json!({})),
                )
                .await?;
            println!("incident {id} acknowledged");
        }
        IncidentCommand::Note { id, text, api } => {
            ApiClient::connect(&api)?
                .call(
                    Method::POST,
                    &format!("/incidents/{id}/notes"),
                    Some(&serde_json::json!({ "text": text })),
                )
                .await?;
            println!("note added to incident {id}");
        }
    }
    Ok(())
}

/// `vantage channels …`.
async fn channels(command: ChannelCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        ChannelCommand::List(api) => definitions("channels", DefinitionCommand::List(api)).await,
        ChannelCommand::Create { file, api } => {
            definitions("channels", DefinitionCommand::Create { file, api }).await
        }
        ChannelCommand::Delete { id, api } => {
            definitions("channels", DefinitionCommand::Delete { id, api }).await
        }
        ChannelCommand::Test { id, api } => {
            let answer = ApiClient::connect(&api)?
                .call(Method::POST, &format!("/channels/{id}/test"), None)
                .await?;
            println!("{answer}");
            Ok(())
        }
    }
}

/// `vantage cloud-init`.
#[derive(Debug, clap::Args)]
pub struct CloudInitArgs {
    #[arg(long)]
    pub region: String,
    /// Labels as k=v, repeatable or comma separated; bound to the token.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// How many nodes may enroll with this user-data (e.g. the instance count).
    #[arg(long, default_value_t = 1)]
    pub uses: i64,
    /// Lifetime of the token, e.g. 30m, 12h, 7d.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// The control plane's HTTPS API as nodes reach it, e.g. https://cp.example.net:8443.
    #[arg(long, env = "VANTAGE_PUBLIC_URL")]
    pub server_url: String,
    /// Where nodes fetch the artifacts (default: <server-url>/dist, served by `serve --dist-dir`).
    #[arg(long)]
    pub artifacts_url: Option<String>,
    /// The release public key (default: release.pub in --dist-dir).
    #[arg(long)]
    pub release_pubkey: Option<PathBuf>,
    /// image/build's output directory.
    #[arg(long, env = "VANTAGE_DIST_DIR")]
    pub dist_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token; prints the secret once.
    Create {
        #[arg(long)]
        region: String,
        /// Labels as k=v, repeatable or comma separated.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: i64,
        /// Lifetime, e.g. 3600, 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List enrollment tokens (no secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token; prints the secret once.
    Create {
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List API tokens: id, role, name, creation time, revoked (never a secret).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an API token; a running server refuses it from the next request on.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List agents.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an agent: its certificate is refused from now on.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub use crate::settings::parse_duration_s;

/// Parses `k=v` labels.
///
/// # Errors
/// A message naming the bad label.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("label {item:?} is not k=v"))
        })
        .collect()
}

/// Runs one command.
///
/// # Errors
/// Whatever the command fails with.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(settings) => {
            let app = crate::app::Application::build(settings).await?;
            app.run_until(shutdown_signal()).await;
            Ok(())
        }
        Command::Migrate(store) => {
            let store = store.open().await?;
            println!("migrations applied ({})", store.backend());
            Ok(())
        }
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Token(TokenCommand::Create {
            region,
            labels,
            uses,
            ttl,
            store,
        }) => {
            let (row, secret) =
                create_enrollment_token(&store, region, &labels, uses, &ttl).await?;
            eprintln!(
                "enrollment token {} for region {} ({} uses, expires at {} ms)",
                row.id, row.region, row.uses_left, row.expires_at_ms
            );
            println!("{secret}");
            Ok(())
        }
        Command::CloudInit(args) => cloud_init(args).await,
        Command::Token(TokenCommand::List { store }) => {
            let store = store.open().await?;
            for token in store.list_enrollment_tokens().await? {
                println!(
                    "{}\t{}\tuses_left={}\texpires_at_ms={}",
                    token.id, token.region, token.uses_left, token.expires_at_ms
                );
            }
            Ok(())
        }
        Command::ApiToken(ApiTokenCommand::Create { role, name, store }) => {
            let role = Role::parse(&role)
                .ok_or_else(|| anyhow::anyhow!("role must be viewer, operator or admin"))?;
            let store = store.open().await?;
            let (row, secret) = store.create_api_token(role, &name).await?;
            eprintln!("API token {} with role {}", row.id, row.role.as_str());
            println!("{secret}");
            Ok(())
        }
        Command::ApiToken(ApiTokenCommand::List { store }) => {
            let store = store.open().await?;
            for token in store.list_api_tokens().await? {
                println!(
                    "{}\t{}\t{}\tcreated_at_ms={}{}",
                    token.id,
                    token.role.as_str(),
                    token.name,
                    token.created_at_ms,
                    token
                        .revoked_at_ms
                        .map(|at| format!("\trevoked_at_ms={at}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::ApiToken(ApiTokenCommand::Revoke { id, store }) => {
            let store = store.open().await?;
            if store.revoke_api_token(&id).await? {
                println!("API token {id} revoked");
                Ok(())
            } else {
                anyhow::bail!("API token {id:?} does not exist or is already revoked")
            }
        }
        Command::Agent(AgentCommand::List { store }) => {
            let store = store.open().await?;
            for agent in store.list_agents(None).await? {
                println!(
                    "{}\t{}\t{}\t{}{}",
                    agent.id,
                    agent.region,
                    agent.state.as_str(),
                    agent.hostname,
                    if agent.revoked_at_ms.is_some() {
                        "\trevoked"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Command::Regions(store) => {
            let store = store.open().await?;
            println!("REGION\tONLINE\tAGENTS\tCHECKS\tFALLBACK\tSTATUS");
            for region in crate::regions::list(&store).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    region.id,
                    region.n_online,
                    region.agents.len(),
                    region.n_checks,
                    region.n_fallback,
                    region.status
                );
            }
            Ok(())
        }
        Command::Incidents {
            action: Some(action),
            ..
        } => incident(action).await,
        Command::Channels(command) => channels(command).await,
        Command::Backup { out, store } => {
            let opened = store.open().await?;
            let report = crate::backup::backup(&opened, &store.data_dir, &out).await;
            opened.close().await;
            let report = report?;
            println!(
                "Backup of the {} store written to {} ({} files)",
                report.manifest.backend,
                report.dir.display(),
                report.manifest.files.len()
            );
            for file in &report.manifest.files {
                println!("  {file}");
            }
            if let Some(hint) = report.pg_dump_hint {
                println!("Dump the PostgreSQL store beside it with:\n  {hint}");
            }
            Ok(())
        }
        Command::BrokerConfig {
            out,
            names,
            data_dir,
        } => {
            let pki = crate::pki::Pki::load_or_create(&data_dir, &[])?;
            let secrets = crate::brokerauth::BrokerSecrets::load_or_create(pki.dir())?;
            let (cert, key) = pki.issue_broker_server(&names)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let write = |name: &str, text: &str, mode: u32| {
                let path = out.join(name);
                vantage_agent::files::write_atomic(&path, text.as_bytes(), mode)
                    .with_context(|| format!("cannot write {}", path.display()))
            };
            write("vantage-auth.conf", &secrets.auth_config()?, 0o644)?;
            write("ca.pem", pki.ca_pem(), 0o644)?;
            write("broker.pem", &cert, 0o644)?;
            write("broker.key", &key, 0o600)?;
            println!(
                "Wrote vantage-auth.conf, ca.pem, broker.pem and broker.key into {}",
                out.display()
            );
            Ok(())
        }
        Command::Restore { from, data_dir } => {
            let report = crate::backup::restore(&from, &data_dir).await?;
            println!(
                "Restored the {} backup of {} ms into {} ({} files)",
                report.manifest.backend,
                report.manifest.created_at_ms,
                data_dir.display(),
                report.files.len()
            );
            if report.manifest.backend == "postgres" {
                println!(
                    "Restore the PostgreSQL dump with: pg_restore --clean --if-exists --dbname \"$DATABASE_URL\" vantage.pgdump"
                );
            }
            Ok(())
        }
        Command::Checks(ChecksCommand::Uptime { checks, api }) => uptime(checks, api).await,
        Command::Series {
            check,
            range,
            step,
            api,
        } => series(check, range, step, api).await,
        Command::Maintenance(command) => definitions("maintenance", command).await,
        Command::Rules(command) => definitions("rules", command).await,
        Command::Incidents {
            open,
            limit,
            store,
            action: None,
        } => {
            anyhow::ensure!((1..=10_000).contains(&limit), "--limit must be 1..=10000");
            let store = store.open().await?;
            println!("ID\tSUBJECT\tSTATE\tOPENED_AT_MS\tTITLE");
            for incident in store.list_incidents(open, limit).await? {
                println!(
                    "{}\t{}:{}\t{}\t{}\t{}",
                    incident.id,
                    incident.subject.as_str(),
                    incident.subject_id,
                    if incident.open { "open" } else { "resolved" },
                    incident.opened_at_ms,
                    incident.title
                );
            }
            Ok(())
        }
        Command::Agent(AgentCommand::Revoke { id, store }) => {
            let store = store.open().await?;
            if store.revoke_agent(&id).await? {
                println!("agent {id} revoked");
                Ok(())
            } else {
                anyhow::bail!("agent {id:?} does not exist or is already revoked")
            }
        }
    }
}

/// Validates the request as the API does, then creates the token; returns it and its secret.
async fn create_enrollment_token(
    store: &StoreArgs,
    region: String,
    labels: &[String],
    uses: i64,
    ttl: &str,
) -> anyhow::Result<(crate::store::EnrollmentTokenRow, String)> {
    let request = crate::enrollment::CreateTokenRequest {
        region,
        labels: parse_labels(labels).map_err(anyhow::Error::msg)?,
        uses,
        ttl_s: parse_duration_s(ttl).map_err(anyhow::Error::msg)?,
    };
    // Checked before the store is opened, so a bad request touches nothing.
    crate::enrollment::validate_token_request(&request).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = store.open().await?;
    Ok(crate::enrollment::create_token(&store, &request).await?)
}

/// `vantage cloud-init`: everything is checked before the token is created.
async fn cloud_init(args: CloudInitArgs) -> anyhow::Result<()> {
    use crate::cloudinit;
    let server_url = args.server_url.trim_end_matches('/').to_owned();
    cloudinit::check_url("--server-url", &server_url).map_err(anyhow::Error::msg)?;
    let artifacts_url = args
        .artifacts_url
        .clone()
        .unwrap_or_else(|| format!("{server_url}/dist"));
    let artifacts_url = artifacts_url.trim_end_matches('/').to_owned();
    cloudinit::check_url("--artifacts-url", &artifacts_url).map_err(anyhow::Error::msg)?;
    let pubkey_path = match (&args.release_pubkey, &args.dist_dir) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => dir.join("release.pub"),
        (None, None) => anyhow::bail!(
            "no release key: pass --release-pubkey FILE or --dist-dir DIR (image/build's output)"
        ),
    };
    let release_pub = std::fs::read_to_string(&pubkey_path)
        .with_context(|| format!("cannot read the release key {}", pubkey_path.display()))?;
    if !release_pub.contains("-----BEGIN PUBLIC KEY-----") {
        anyhow::bail!("{} is not a PEM public key", pubkey_path.display());
    }
    let ca_path = args.store.data_dir.join("pki").join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "cannot read the CA {} (start `vantage serve` once with this --data-dir)",
            ca_path.display()
        )
    })?;
    let (row, secret) =
        create_enrollment_token(&args.store, args.region, &args.labels, args.uses, &args.ttl)
            .await?;
    let comment = format!(
        "Vantage agent for region {}: enrollment token {} ({} uses, expires at {} ms since the epoch)",
        row.region, row.id, row.uses_left, row.expires_at_ms
    );
    print!(
        "{}",
        cloudinit::render(&cloudinit::UserData {
            server_url: &server_url,
            artifacts_url: &artifacts_url,
            ca_pem: &ca_pem,
            release_pub_pem: &release_pub,
            token: &secret,
            comment: &comment,
        })
    );
    eprintln!("{comment}");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(term) => { term.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_labels_parse_or_explain() {
        assert_eq!(parse_duration_s("3600"), Ok(3600));
        assert_eq!(parse_duration_s("30m"), Ok(1800));
        assert_eq!(parse_duration_s("7d"), Ok(604_800));
        assert!(parse_duration_s("7w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration_s("h").is_err());
        assert_eq!(
            parse_labels(&["role=web".into(), "tier = 1".into()]).unwrap(),
            BTreeMap::from([("role".into(), "web".into()), ("tier".into(), "1".into())])
        );
        assert!(parse_labels(&["novalue".into()]).is_err());
    }
}
