//! The agent's config file (TOML) with `VANTAGE_AGENT_*` environment overrides.
//!
//! ```toml
//! server_url = "https://cp.example.net:8443"   # the control plane's HTTPS API
//! enrollment_token = "vet_…"                    # needed only until enrolled
//! ca_file = "/etc/vantage/ca.pem"               # or ca_pem = """-----BEGIN CERTIFICATE-----…"""
//! state_dir = "/var/lib/vantage-agent"
//! [labels]
//! role = "web"
//! [spool]
//! max_entries = 100000
//! [zabbix_sender]                               # optional: also send host metrics to Zabbix
//! server = "zabbix.example.net:10051"           # a Zabbix server or proxy's trapper
//! host = "web-1"                                # the host's name in Zabbix (default: hostname)
//! key_prefix = "vantage."                       # item keys: vantage.cpu_pct, …
//! timeout_ms = 3000                             # one send: connect, write and answer
//! [relay]                                       # optional: a webhook relay on the node's LAN
//! listen = "192.168.1.20:8090"                  # where a Zabbix server on the LAN posts
//! secret = "…"                                  # the Vantage source's secret
//! source = "zabbix"                             # the Vantage source the events belong to
//! ```
//! Unknown keys are an error, so a typo never silently changes behaviour.
//!
//! `[zabbix_sender]` (off when absent) sends every host-metrics sample to Zabbix as well, as
//! trapper items over the Zabbix sender protocol (see [`crate::zabbix_sender`] for the keys
//! and what happens when Zabbix is slow or down). Link the host in Zabbix to the template
//! `provision/zabbix/vantage_agent_template.yaml`, which has one trapper item per key with
//! the default prefix.
//!
//! `[relay]` (off when absent) listens for webhooks on the node's network, for a Zabbix
//! server that cannot reach the control plane: its bodies are spooled and sent over the
//! session like results (see [`crate::relay`]). It holds a secret, so keep the file `0600`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default config path.
pub const DEFAULT_PATH: &str = "/etc/vantage/agent.toml";

/// Errors of loading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Spool bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Most entries kept while unacknowledged; beyond it the oldest are dropped and counted.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Most bytes of encoded entries kept.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_entries: default_max_entries(),
            max_bytes: default_max_bytes(),
        }
    }
}

fn default_max_entries() -> usize {
    100_000
}
fn default_max_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vantage-agent")
}

/// The Zabbix trapper port, when `server` names none.
pub const ZABBIX_DEFAULT_PORT: u16 = 10051;
/// Longest Zabbix host name (the `hosts.host` column of Zabbix 6.0).
const ZABBIX_MAX_HOST_LEN: usize = 128;
/// Longest key prefix; the longest key it makes stays far below Zabbix's 2,048.
const ZABBIX_MAX_PREFIX_LEN: usize = 64;

/// `[zabbix_sender]`: host metrics also sent to a Zabbix server or proxy as trapper items.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZabbixSenderConfig {
    /// The trapper of a Zabbix server or proxy: `host:port`, or `host` for port 10051; an
    /// IPv6 address goes in brackets (`[2001:db8::1]:10051`).
    pub server: String,
    /// The host's technical name in Zabbix (letters, digits, spaces, `.`, `-`, `_`; at most
    /// 128 characters); by default the node's hostname.
    #[serde(default)]
    pub host: Option<String>,
    /// What every item key starts with: `vantage.` gives `vantage.cpu_pct` and so on, the
    /// keys of the shipped template.
    #[serde(default = "default_zabbix_key_prefix")]
    pub key_prefix: String,
    /// How long one send may take, in milliseconds: resolving, connecting, writing and
    /// reading the answer together (100 to 60,000).
    #[serde(default = "default_zabbix_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_zabbix_key_prefix() -> String {
    "vantage.".to_owned()
}
fn default_zabbix_timeout_ms() -> u32 {
    3_000
}

impl ZabbixSenderConfig {
    /// `server` as host and port (the port 10051 when it names none).
    ///
    /// # Errors
    /// A message saying what is wrong with `server`.
    pub fn server_addr(&self) -> Result<(String, u16), String> {
        let server = self.server.trim();
        let bad = |why: &str| format!("zabbix_sender.server {server:?} {why}");
        let (host, port) = if let Some(rest) = server.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("has a '[' without its ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("must be [address]:port"))?,
                    ),
                ),
            }
        } else {
            match server.matches(':').count() {
                0 => (server, None),
                1 => server
                    .split_once(':')
                    .map(|(host, port)| (host, Some(port)))
                    .ok_or_else(|| bad("must be host:port"))?,
                _ => return Err(bad("must put an IPv6 address in brackets: [address]:port")),
            }
        };
        let bracketed = server.starts_with('[');
        if bracketed && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("must hold an IPv6 address between '[' and ']'"));
        }
        if !crate::probe::valid_host(host) || !bracketed && host.contains(['[', ']']) {
            return Err(bad("must name a host or address"));
        }
        let port = match port {
            None => ZABBIX_DEFAULT_PORT,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(bad("must have a port in 1..=65535")),
            },
        };
        Ok((host.to_owned(), port))
    }

    /// The host name the items are sent for: `host`, or else `hostname`.
    pub fn host_name(&self, hostname: &str) -> String {
        self.host.clone().unwrap_or_else(|| hostname.to_owned())
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        self.server_addr()?;
        if let Some(host) = &self.host
            && let Err(why) = valid_zabbix_host(host)
        {
            return Err(format!("zabbix_sender.host {host:?} {why}"));
        }
        if self.key_prefix.len() > ZABBIX_MAX_PREFIX_LEN
            || !self
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "zabbix_sender.key_prefix {:?} may hold only letters, digits, '.', '_' and '-' \
                 (at most {ZABBIX_MAX_PREFIX_LEN})",
                self.key_prefix
            ));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err(format!(
                "zabbix_sender.timeout_ms {} must be 100..=60000",
                self.timeout_ms
            ));
        }
        Ok(())
    }
}

/// `[relay]`: a webhook listener on the node's network whose bodies go over the agent's
/// session (see [`crate::relay`]).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The address to listen on (plain HTTP; a LAN or loopback address, never the internet).
    pub listen: std::net::SocketAddr,
    /// The integration source's secret, as the control plane showed it when the source was
    /// made: senders give it as `Authorization: Bearer …`, and the agent signs each body
    /// with it.
    pub secret: String,
    /// The integration source the bodies belong to (a Zabbix or hmac source).
    #[serde(default = "default_relay_source")]
    pub source: String,
}

fn default_relay_source() -> String {
    "zabbix".to_owned()
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("secret", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

impl RelayConfig {
    /// Checks the secret and source id.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=256).contains(&self.secret.len())
            || !self.secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(
                "relay.secret must be the source's secret: 16 to 256 printable characters".into(),
            );
        }
        if !vantage_mqtt::topic::valid_source_id(&self.source) {
            return Err(format!(
                "relay.source {:?} is not a source id (1 to 64 lower-case letters, digits, '-' \
                 and '_', starting with a letter or digit)",
                self.source
            ));
        }
        Ok(())
    }
}

/// Whether `host` is a name Zabbix accepts for a host: 1 to 128 letters, digits, spaces, dots,
/// dashes and underscores.
///
/// # Errors
/// Why it is not.
pub fn valid_zabbix_host(host: &str) -> Result<(), &'static str> {
    if host.trim().is_empty() || host.len() > ZABBIX_MAX_HOST_LEN {
        return Err("must be 1 to 128 characters");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_'))
    {
        return Err("may hold only letters, digits, spaces, '.', '-' and '_'");
    }
    Ok(())
}

/// The agent's configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// HTTPS URL of the control plane's API, used to enroll.
    pub server_url: Option<String>,
    /// One-time enrollment token; ignored once enrolled.
    pub enrollment_token: Option<String>,
    /// The control plane's CA certificate file (pinned for enrollment).
    pub ca_file: Option<PathBuf>,
    /// The control plane's CA certificate inline, as PEM.
    pub ca_pem: Option<String>,
    /// Where the identity, spool and sequence live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Labels sent at enrollment and in every hello.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Host metrics interval in seconds; overrides the control plane's value when set.
    #[serde(default)]
    pub metrics_interval_s: Option<u32>,
    /// Report per-core CPU usage.
    #[serde(default)]
    pub per_core: bool,
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Host metrics also sent to Zabbix; off when absent.
    #[serde(default)]
    pub zabbix_sender: Option<ZabbixSenderConfig>,
    /// A webhook relay on the node's network; off when absent.
    #[serde(default)]
    pub relay: Option<RelayConfig>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server_url", &self.server_url)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .field("state_dir", &self.state_dir)
            .field("labels", &self.labels)
            .field("zabbix_sender", &self.zabbix_sender)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// Loads `path`, then applies `VANTAGE_AGENT_SERVER_URL`, `VANTAGE_AGENT_ENROLLMENT_TOKEN`,
    /// `VANTAGE_AGENT_CA_FILE` and `VANTAGE_AGENT_STATE_DIR` when set.
    ///
    /// # Errors
    /// Unreadable file, invalid TOML, unknown keys, or an unusable combination.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        if let Ok(v) = std::env::var("VANTAGE_AGENT_SERVER_URL") {
            config.server_url = Some(v);
        }
        if let Ok(v) = std::env::var("VANTAGE_AGENT_ENROLLMENT_TOKEN") {
            config.enrollment_token = Some(v);
        }
        if let Ok(v) = std::env::var("VANTAGE_AGENT_CA_FILE") {
            config.ca_file = Some(PathBuf::from(v));
        }
        if let Ok(v) = std::env::var("VANTAGE_AGENT_STATE_DIR") {
            config.state_dir = PathBuf::from(v);
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Parses and checks the text of a config file (`path` only names it in errors); the
    /// environment is not read.
    ///
    /// # Errors
    /// Invalid TOML, unknown keys, or an unusable combination.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.spool.max_entries == 0 || self.spool.max_bytes < 1024 {
            return Err(invalid(
                "spool.max_entries must be > 0 and spool.max_bytes >= 1024".into(),
            ));
        }
        if let Some(url) = &self.server_url
            && !url.starts_with("https://")
        {
            return Err(invalid(format!(
                "server_url {url:?} must start with https://"
            )));
        }
        if let Some(zabbix) = &self.zabbix_sender {
            zabbix.validate().map_err(invalid)?;
        }
        if let Some(relay) = &self.relay {
            relay.validate().map_err(invalid)?;
        }
        Ok(())
    }

    /// The pinned CA certificate in PEM, from `ca_pem` or `ca_file`.
    ///
    /// # Errors
    /// Neither is set, or the file cannot be read.
    pub fn ca_pem(&self) -> Result<String, ConfigError> {
        if let Some(pem) = &self.ca_pem {
            return Ok(pem.clone());
        }
        let path = self.ca_file.as_ref().ok_or_else(|| ConfigError::Invalid {
            path: PathBuf::new(),
            message: "set ca_file or ca_pem to pin the control plane's CA".into(),
        })?;
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_needs_a_real_secret_and_a_source_id_and_never_shows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let with = |relay: &str| {
            std::fs::write(&path, format!("ca_pem = \"PEM\"\n[relay]\n{relay}")).unwrap();
            AgentConfig::load(&path)
        };
        let config =
            with("listen = \"127.0.0.1:8090\"\nsecret = \"vsrc_0123456789abcdef\"\n").unwrap();
        let relay = config.relay.as_ref().expect("relay");
        assert_eq!(relay.source, "zabbix");
        assert_eq!(relay.listen.port(), 8090);
        assert!(!format!("{config:?}").contains("vsrc_0123456789abcdef"));
        for (bad, says) in [
            (
                "listen = \"127.0.0.1:8090\"\nsecret = \"short\"\n",
                "relay.secret",
            ),
            (
                "listen = \"127.0.0.1:8090\"\nsecret = \"vsrc 0123456789abcdef\"\n",
                "relay.secret",
            ),
            (
                "listen = \"127.0.0.1:8090\"\nsecret = \"vsrc_0123456789abcdef\"\nsource = \"Zab.bix\"\n",
                "relay.source",
            ),
            (
                "listen = \"nowhere\"\nsecret = \"vsrc_0123456789abcdef\"\n",
                "listen",
            ),
            ("secret = \"vsrc_0123456789abcdef\"\n", "listen"),
        ] {
            let error = with(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(!error.contains("0123456789abcdef"), "the secret in {error}");
        }
    }

    #[test]
    fn loads_a_full_config_and_refuses_unknown_keys_and_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "server_url = \"https://cp:8443\"\nenrollment_token = \"vet_x\"\nca_pem = \"PEM\"\nstate_dir = \"/tmp/s\"\n[labels]\nrole = \"web\"\n[spool]\nmax_entries = 10\n",
        )
        .unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.labels["role"], "web");
        assert_eq!(config.spool.max_entries, 10);
        assert_eq!(config.ca_pem().unwrap(), "PEM");
        assert!(
            !format!("{config:?}").contains("vet_x"),
            "token leaked into Debug"
        );

        std::fs::write(&path, "server_urll = \"https://cp\"\n").unwrap();
        assert!(matches!(
            AgentConfig::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, "server_url = \"http://cp\"\n").unwrap();
        assert!(matches!(
            AgentConfig::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            AgentConfig::load(&dir.path().join("missing.toml")),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn zabbix_sender_is_off_by_default_has_defaults_and_refuses_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "state_dir = \"/tmp/s\"\n").unwrap();
        assert!(AgentConfig::load(&path).unwrap().zabbix_sender.is_none());

        std::fs::write(&path, "[zabbix_sender]\nserver = \"zabbix.example.net\"\n").unwrap();
        let zabbix = AgentConfig::load(&path).unwrap().zabbix_sender.unwrap();
        assert_eq!(
            zabbix.server_addr().unwrap(),
            ("zabbix.example.net".to_owned(), 10051)
        );
        assert_eq!(zabbix.host_name("node-7"), "node-7");
        assert_eq!(zabbix.key_prefix, "vantage.");
        assert_eq!(zabbix.timeout_ms, 3000);

        std::fs::write(
            &path,
            "[zabbix_sender]\nserver = \"[2001:db8::1]:10052\"\nhost = \"Web 1\"\nkey_prefix = \"edge.\"\ntimeout_ms = 500\n",
        )
        .unwrap();
        let zabbix = AgentConfig::load(&path).unwrap().zabbix_sender.unwrap();
        assert_eq!(
            zabbix.server_addr().unwrap(),
            ("2001:db8::1".to_owned(), 10052)
        );
        assert_eq!(zabbix.host_name("node-7"), "Web 1");
        assert_eq!(zabbix.key_prefix, "edge.");

        let invalid = [
            ("server = \"\"", "zabbix_sender.server"),
            ("server = \"zabbix:0\"", "port"),
            ("server = \"zabbix:http\"", "port"),
            ("server = \"zabbix:70000\"", "port"),
            ("server = \"2001:db8::1\"", "brackets"),
            ("server = \"[zabbix]:10051\"", "IPv6"),
            ("server = \"[::1\"", "']'"),
            (
                "server = \"zabbix\"\nhost = \"web/1\"",
                "zabbix_sender.host",
            ),
            ("server = \"zabbix\"\nhost = \"\"", "zabbix_sender.host"),
            ("server = \"zabbix\"\nkey_prefix = \"a b\"", "key_prefix"),
            ("server = \"zabbix\"\ntimeout_ms = 10", "timeout_ms"),
        ];
        for (table, named) in invalid {
            std::fs::write(&path, format!("[zabbix_sender]\n{table}\n")).unwrap();
            match AgentConfig::load(&path) {
                Err(ConfigError::Invalid { message, .. }) => {
                    assert!(message.contains(named), "{table}: {message}");
                }
                other => panic!("{table}: {other:?}"),
            }
        }
        for table in ["host = \"web-1\"", "server = \"z\"\nport = 10051"] {
            std::fs::write(&path, format!("[zabbix_sender]\n{table}\n")).unwrap();
            assert!(
                matches!(AgentConfig::load(&path), Err(ConfigError::Parse { .. })),
                "{table}"
            );
        }
    }
}
