//! The control plane's typed settings, from command-line flags and `VANTAGE_*` variables.
//!
//! Every field has a default that runs a complete single-machine control plane: data in
//! `./vantage-data`, SQLite, HTTPS API on 8443, MQTT over TLS on 8883. Port 0 picks a free
//! port (tests and the demo use it). `DATABASE_URL` switches the store to PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never be printed (it may hold a password).
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Settings of `vantage serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Directory for the SQLite file, the CA and the server certificate.
    #[arg(long, env = "VANTAGE_DATA_DIR", default_value = "vantage-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://…`); SQLite in the data dir when unset.
    #[arg(long, env = "DATABASE_URL", value_parser = parse_secret, hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Address of the HTTPS API and live feed.
    #[arg(long, env = "VANTAGE_HTTP_ADDR", default_value = "0.0.0.0:8443")]
    pub http_addr: SocketAddr,
    /// Address of the public MQTT-over-TLS listener (the front door).
    #[arg(long, env = "VANTAGE_MQTT_ADDR", default_value = "0.0.0.0:8883")]
    pub mqtt_addr: SocketAddr,
    /// Host name or address agents use to reach this control plane; it is put into the
    /// server certificate and handed to agents at enrollment.
    #[arg(long, env = "VANTAGE_PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,
    /// TLS handshake timeout on the MQTT listener, in milliseconds.
    #[arg(long, env = "VANTAGE_HANDSHAKE_TIMEOUT_MS", default_value_t = 3000)]
    pub handshake_timeout_ms: u64,
    /// Most MQTT connections open at once.
    #[arg(long, env = "VANTAGE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most TLS handshakes in progress from one client address on the MQTT listener.
    #[arg(
        long,
        env = "VANTAGE_MAX_PENDING_HANDSHAKES_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_pending_handshakes_per_address: usize,
    /// Host metrics interval handed to agents, in seconds.
    #[arg(long, env = "VANTAGE_METRICS_INTERVAL_S", default_value_t = 10)]
    pub metrics_interval_s: u32,
    /// Heartbeat interval handed to agents, in seconds.
    #[arg(long, env = "VANTAGE_HEARTBEAT_INTERVAL_S", default_value_t = 10)]
    pub heartbeat_interval_s: u32,
    /// Validity of agent client certificates, in days (1 to 3650). Agents renew theirs over
    /// MQTT at two thirds of it.
    #[arg(long, env = "VANTAGE_CERT_VALIDITY_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub cert_validity_days: i64,
    /// Validity of agent client certificates in seconds (60 to 315360000); when set, it
    /// overrides `cert_validity_days`. Meant for tests and trials of renewal.
    #[arg(long, env = "VANTAGE_CERT_VALIDITY_S",
          value_parser = clap::value_parser!(i64).range(60..=315_360_000))]
    pub cert_validity_s: Option<i64>,
    /// Directory of release artifacts (image/build's output) served under `/dist`; cloud-init
    /// user-data and install.sh fetch the agent from there.
    #[arg(long, env = "VANTAGE_DIST_DIR")]
    pub dist_dir: Option<PathBuf>,
    /// Most rows committed in one ingest transaction.
    #[arg(long, env = "VANTAGE_INGEST_BATCH_ROWS", default_value_t = 5000)]
    pub ingest_batch_rows: usize,
    /// Ingest transactions in flight at once on PostgreSQL, each committing its own share of
    /// the agents (1–8: each holds one of the pool's 16 connections while it commits, and the
    /// API, heartbeats and judging need the rest; SQLite has one writer and always uses 1).
    #[arg(long, env = "VANTAGE_INGEST_COMMITTERS", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=8))]
    pub ingest_committers: u8,
    /// API requests per second allowed from one client address (a token bucket).
    #[arg(long, env = "VANTAGE_API_RATE_PER_S", default_value_t = 200.0)]
    pub api_rate_per_s: f64,
    /// Burst of API requests one client address may make above that rate.
    #[arg(long, env = "VANTAGE_API_RATE_BURST", default_value_t = 400.0)]
    pub api_rate_burst: f64,
    /// Webhook requests (`/api/v1/integrations/…`) per second allowed from one client
    /// address: a sender such as a Zabbix server posts bursts of events, apart from the API.
    #[arg(long, env = "VANTAGE_WEBHOOK_RATE_PER_S", default_value_t = 2000.0)]
    pub webhook_rate_per_s: f64,
    /// Burst of webhook requests one client address may make above that rate.
    #[arg(long, env = "VANTAGE_WEBHOOK_RATE_BURST", default_value_t = 4000.0)]
    pub webhook_rate_burst: f64,
    /// Most HTTPS connections open at once (live feeds included); more are closed at accept.
    #[arg(long, env = "VANTAGE_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// TLS handshake timeout on the HTTPS listener, in milliseconds.
    #[arg(long, env = "VANTAGE_HTTP_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_handshake_timeout_ms: u64,
    /// Time an HTTPS client has to send a complete request head, in milliseconds: the first
    /// from the end of the TLS handshake, later ones (HTTP/1) from their first byte.
    #[arg(long, env = "VANTAGE_HTTP_HEADER_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_ms: u64,
    /// An HTTPS connection with no request in flight is closed this long after its last
    /// request ended, in milliseconds (a streaming live feed is a request in flight).
    #[arg(long, env = "VANTAGE_HTTP_IDLE_TIMEOUT_MS", default_value_t = 120_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_ms: u64,
    /// After agents logged in (reconnect churn leaves freed pages behind), freed heap memory
    /// is handed back to the system at most once per this many milliseconds; 0 turns it off.
    /// Each trim costs a few milliseconds of allocator locks and page faults after it.
    #[arg(long, env = "VANTAGE_HEAP_TRIM_INTERVAL_MS", default_value_t = 5_000)]
    pub heap_trim_interval_ms: u64,
    /// An agent offline this long (and a region with no agent online this long) raises its
    /// own incident, in seconds; shorter absences (a restart, an upgrade) raise none.
    #[arg(long, env = "VANTAGE_AGENT_OFFLINE_GRACE_S", default_value_t = 120)]
    pub agent_offline_grace_s: u32,
    /// Delivery attempts per notification before it is kept as a dead letter (retries wait
    /// 1 s, 2 s, 4 s, … up to 5 minutes apart).
    #[arg(long, env = "VANTAGE_NOTIFY_MAX_ATTEMPTS", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub notify_max_attempts: u32,
    /// A check's incident is resolved once the check has been UP this many seconds; a
    /// failure in between keeps the same incident open, so a flapping target makes one
    /// incident per episode, not one per flap (0: resolve at once).
    #[arg(long, env = "VANTAGE_RESOLVE_AFTER_S", default_value_t = 60)]
    pub resolve_after_s: u32,
    /// How long raw results and host metrics are kept (`90s`, `30m`, `12h`, `7d`); older
    /// ones are answered from the rollups.
    #[arg(long, env = "VANTAGE_RETENTION_RAW", default_value = "7d", value_parser = parse_retention)]
    pub retention_raw_s: i64,
    /// How long per-minute rollups are kept.
    #[arg(long, env = "VANTAGE_RETENTION_MINUTE", default_value = "7d", value_parser = parse_retention)]
    pub retention_minute_s: i64,
    /// How long per-hour rollups are kept.
    #[arg(long, env = "VANTAGE_RETENTION_HOUR", default_value = "400d", value_parser = parse_retention)]
    pub retention_hour_s: i64,
    /// How long events from integration sources (and the external nodes they named) are
    /// kept.
    #[arg(long, env = "VANTAGE_RETENTION_EVENTS", default_value = "90d", value_parser = parse_retention)]
    pub retention_events_s: i64,
    /// How often expired rows are deleted.
    #[arg(long, env = "VANTAGE_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_retention)]
    pub retention_interval_s: i64,
    /// Client URLs of an external NATS broker cluster (`tls://host:4222,tls://…`). When set,
    /// this replica answers the cluster's auth callout for agents connecting there
    /// (`vantage broker-config` writes the cluster's auth config).
    #[arg(long, env = "VANTAGE_BROKER_NATS_URLS")]
    pub broker_nats_urls: Option<String>,
    /// The MQTT listeners of that cluster (`host:port,host:port,…`): agents enrolled from now
    /// on are handed these instead of this replica's front door, and the control plane
    /// publishes configs, commands and acks there. Needs `broker_nats_urls`.
    #[arg(long, env = "VANTAGE_BROKER_MQTT_ADDRS", requires = "broker_nats_urls")]
    pub broker_mqtt_addrs: Option<String>,
    /// Replicas of the cluster's ingest stream (at most the number of nodes).
    #[arg(long, env = "VANTAGE_BROKER_STREAM_REPLICAS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=5))]
    pub broker_stream_replicas: u16,
}

/// Parses a duration like `3600`, `90s`, `30m`, `12h`, `7d` into seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration_s(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(pos) => text.split_at(pos),
        None => (text, "s"),
    };
    let value: i64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} must look like 3600, 90s, 30m, 12h or 7d"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "duration {text:?} has an unknown unit {unit:?} (s, m, h, d)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// A retention setting: a duration of at least a minute.
fn parse_retention(text: &str) -> Result<i64, String> {
    match parse_duration_s(text)? {
        s if s >= 60 => Ok(s),
        _ => Err(format!("{text:?} is shorter than a minute")),
    }
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret(text.to_owned()))
}

impl Settings {
    /// Defaults for a control plane in `data_dir` on free loopback ports.
    pub fn ephemeral(data_dir: PathBuf) -> Settings {
        Settings {
            data_dir,
            database_url: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_host: "127.0.0.1".into(),
            handshake_timeout_ms: 3000,
            max_connections: 10_000,
            max_pending_handshakes_per_address: 256,
            metrics_interval_s: 10,
            heartbeat_interval_s: 10,
            cert_validity_days: 90,
            cert_validity_s: None,
            ingest_batch_rows: 5000,
            ingest_committers: 4,
            api_rate_per_s: 200.0,
            api_rate_burst: 400.0,
            webhook_rate_per_s: 2000.0,
            webhook_rate_burst: 4000.0,
            dist_dir: None,
            http_max_connections: 1024,
            http_handshake_timeout_ms: 10_000,
            http_header_timeout_ms: 20_000,
            http_idle_timeout_ms: 120_000,
            heap_trim_interval_ms: 0,
            agent_offline_grace_s: 120,
            notify_max_attempts: 12,
            resolve_after_s: 60,
            retention_raw_s: 7 * 86_400,
            retention_minute_s: 7 * 86_400,
            retention_hour_s: 400 * 86_400,
            retention_events_s: 90 * 86_400,
            retention_interval_s: 600,
            broker_nats_urls: None,
            broker_mqtt_addrs: None,
            broker_stream_replicas: 3,
        }
    }

    /// How long each kind of row is kept.
    pub fn retention(&self) -> crate::rollup::Retention {
        crate::rollup::Retention {
            raw_ms: self.retention_raw_s * 1000,
            minute_ms: self.retention_minute_s * 1000,
            hour_ms: self.retention_hour_s * 1000,
        }
    }

    /// The validity of a new agent certificate: `cert_validity_s` when set, else
    /// `cert_validity_days`.
    pub fn cert_validity(&self) -> Duration {
        match self.cert_validity_s {
            Some(seconds) => Duration::from_secs(seconds.max(1).unsigned_abs()),
            None => Duration::from_secs(self.cert_validity_days.max(1).unsigned_abs() * 86_400),
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The HTTPS listener's limits.
    pub fn http_limits(&self) -> crate::api::server::HttpLimits {
        crate::api::server::HttpLimits {
            max_connections: self.http_max_connections as usize,
            handshake_timeout: Duration::from_millis(self.http_handshake_timeout_ms),
            header_timeout: Duration::from_millis(self.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(self.http_idle_timeout_ms),
        }
    }
}
