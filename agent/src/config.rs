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
//! ```
//! Unknown keys are an error, so a typo never silently changes behaviour.

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
        let mut config: AgentConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
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
        if config.spool.max_entries == 0 || config.spool.max_bytes < 1024 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "spool.max_entries must be > 0 and spool.max_bytes >= 1024".into(),
            });
        }
        if let Some(url) = &config.server_url
            && !url.starts_with("https://")
        {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("server_url {url:?} must start with https://"),
            });
        }
        Ok(config)
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
}
