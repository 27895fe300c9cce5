//! Enrollment: a key pair made here, a CSR, one HTTPS request with the CA pinned, and the
//! resulting identity stored in the state dir.
//!
//! State dir files: `agent.key` (0600), `agent.pem`, `ca.pem`, `identity.json`. The private
//! key never leaves the node; the control plane signs only its public key. Renewal
//! ([`crate::renew`]) replaces `agent.key` and `agent.pem` through staged `*.next` files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, ConfigError};
use crate::tls;

/// Errors of enrollment and of loading the identity.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("not enrolled and no enrollment_token configured")]
    NoToken,
    #[error("no server_url configured")]
    NoServer,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot make a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("server_url {0:?} is not a valid https URL")]
    BadUrl(String),
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the control plane refused enrollment ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the control plane's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the agent is, once enrolled.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub agent_id: String,
    pub region: String,
    /// `host:port` of the MQTT listener.
    pub mqtt_addr: String,
    pub server_name: String,
    #[serde(skip)]
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
    #[serde(skip)]
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("region", &self.region)
            .field("mqtt_addr", &self.mqtt_addr)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |source| EnrollError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a state file atomically with `mode` (see [`crate::files`]).
///
/// # Errors
/// [`EnrollError::Io`] naming the file.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), EnrollError> {
    crate::files::write_atomic(path, contents, mode).map_err(io_err(path))
}

impl Identity {
    /// Loads the identity from `state_dir`, if the agent is enrolled, after finishing or
    /// undoing a certificate renewal step a stop interrupted ([`crate::renew::recover`]).
    ///
    /// # Errors
    /// A partial or unreadable identity.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, EnrollError> {
        let path = state_dir.join("identity.json");
        if !path.exists() {
            return Ok(None);
        }
        crate::renew::recover(state_dir).map_err(|error| match error {
            crate::renew::RenewError::Io { path, source } => EnrollError::Io { path, source },
            other => EnrollError::BadAnswer(other.to_string()),
        })?;
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut identity: Identity =
            serde_json::from_str(&text).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        let read = |name: &str| {
            let p = state_dir.join(name);
            std::fs::read_to_string(&p).map_err(|source| EnrollError::Io { path: p, source })
        };
        identity.cert_pem = read("agent.pem")?;
        identity.key_pem = read("agent.key")?;
        identity.ca_pem = read("ca.pem")?;
        Ok(Some(identity))
    }

    fn save(&self, state_dir: &Path) -> Result<(), EnrollError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(state_dir))?;
        write_private(&state_dir.join("agent.key"), self.key_pem.as_bytes(), 0o600)?;
        write_private(
            &state_dir.join("agent.pem"),
            self.cert_pem.as_bytes(),
            0o600,
        )?;
        write_private(&state_dir.join("ca.pem"), self.ca_pem.as_bytes(), 0o600)?;
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        // identity.json last: its presence means the rest is complete.
        write_private(&state_dir.join("identity.json"), &json, 0o600)
    }
}

#[derive(Serialize)]
struct EnrollRequest<'a> {
    token: &'a str,
    csr_pem: &'a str,
    hostname: String,
    arch: &'static str,
    os: &'static str,
    version: &'static str,
    labels: &'a std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct EnrollResponse {
    agent_id: String,
    region: String,
    cert_pem: String,
    ca_pem: String,
    mqtt_addr: String,
    server_name: String,
}

/// The host name of this machine, best effort.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Enrolls with the configured token and stores the identity.
///
/// # Errors
/// See [`EnrollError`]; a refusal carries the control plane's message.
pub async fn enroll(config: &AgentConfig) -> Result<Identity, EnrollError> {
    let token = config
        .enrollment_token
        .as_deref()
        .ok_or(EnrollError::NoToken)?;
    let server_url = config.server_url.as_deref().ok_or(EnrollError::NoServer)?;
    let ca_pem = config.ca_pem()?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let request = EnrollRequest {
        token,
        csr_pem: &csr,
        hostname: hostname(),
        arch: std::env::consts::ARCH,
        os: std::env::consts::OS,
        version: crate::VERSION,
        labels: &config.labels,
    };
    let body = serde_json::to_vec(&request).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    let (status, answer) = https_post(server_url, "/api/v1/enroll", &ca_pem, body).await?;
    if status != 201 {
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        return Err(EnrollError::Refused { status, message });
    }
    let answer: EnrollResponse =
        serde_json::from_slice(&answer).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    let identity = Identity {
        agent_id: answer.agent_id,
        region: answer.region,
        mqtt_addr: answer.mqtt_addr,
        server_name: answer.server_name,
        cert_pem: answer.cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem: answer.ca_pem,
    };
    identity.save(&config.state_dir)?;
    Ok(identity)
}

/// POSTs JSON over HTTPS trusting only `ca_pem`; returns the status and body (at most 1 MiB).
///
/// # Errors
/// Connection, TLS or HTTP failures.
pub async fn https_post(
    base_url: &str,
    path: &str,
    ca_pem: &str,
    body: Vec<u8>,
) -> Result<(u16, Bytes), EnrollError> {
    let authority = base_url
        .strip_prefix("https://")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .filter(|a| !a.is_empty())
        .ok_or_else(|| EnrollError::BadUrl(base_url.to_owned()))?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse::<u16>()
                .map_err(|_| EnrollError::BadUrl(base_url.to_owned()))?,
        ),
        _ => (authority, 443),
    };
    let unreachable = |message: String| EnrollError::Unreachable {
        url: base_url.to_owned(),
        message,
    };
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| unreachable("connect timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::pinned_client(ca_pem)?));
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| EnrollError::BadUrl(base_url.to_owned()))?;
    let stream = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| EnrollError::BadUrl(e.to_string()))?;
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sender.send_request(request),
    )
    .await
    .map_err(|_| unreachable("no answer in 30 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}
