//! Enrollment: enrollment tokens, an agent's first identity (its CSR signed against a spent
//! token) and revocation. The API and the CLI call these; [`EnrollError`] maps to statuses in
//! one match in `api/mod.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vantage_mqtt::{AgentTopic, topic};

use crate::AppState;
use crate::store::{
    AgentRow, EnrollmentTokenRow, Labels, Store, StoreError, TokenRefusal, random_id,
};

/// Why an enrollment, a token or a revocation failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A field is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The enrollment token was refused.
    #[error("{0}")]
    Refused(TokenRefusal),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An enrollment request (the body of `POST /api/v1/enroll`).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    pub csr_pem: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// A new agent's identity (the answer of `POST /api/v1/enroll`).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EnrollResponse {
    pub agent_id: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub cert_pem: String,
    pub ca_pem: String,
    /// `host:port` of the MQTT listener.
    pub mqtt_addr: String,
    /// The name to verify the server certificate against.
    pub server_name: String,
}

fn valid_labels(labels: &BTreeMap<String, String>) -> Result<(), EnrollError> {
    if labels.len() > 32 {
        return Err(EnrollError::Invalid("at most 32 labels".into()));
    }
    for (key, value) in labels {
        if !topic::valid_id(key) || value.len() > 256 || value.chars().any(char::is_control) {
            return Err(EnrollError::Invalid(format!(
                "label {key:?} is not valid (keys: 1-64 of a-z 0-9 - _ .; values: at most 256 printable characters)"
            )));
        }
    }
    Ok(())
}

/// Refuses a text over 255 bytes or holding control characters, naming the field.
///
/// # Errors
/// [`EnrollError::Invalid`].
pub fn short_text(name: &str, value: &str) -> Result<(), EnrollError> {
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(EnrollError::Invalid(format!(
            "{name} must be at most 255 printable characters"
        )));
    }
    Ok(())
}

/// Spends an enrollment token and signs the agent's CSR: the new agent's identity.
///
/// # Errors
/// Invalid fields or CSR, a refused token, or the store.
pub async fn enroll(
    state: &AppState,
    request: EnrollRequest,
) -> Result<EnrollResponse, EnrollError> {
    short_text("hostname", &request.hostname)?;
    short_text("arch", &request.arch)?;
    short_text("os", &request.os)?;
    short_text("version", &request.version)?;
    valid_labels(&request.labels)?;
    if request.csr_pem.len() > 16 * 1024
        || rcgen::CertificateSigningRequestParams::from_pem(&request.csr_pem).is_err()
    {
        return Err(EnrollError::Invalid(
            "csr_pem is not a valid PEM certificate signing request".into(),
        ));
    }
    if request.token.is_empty() || request.token.len() > 200 {
        return Err(EnrollError::Refused(TokenRefusal::Unknown));
    }
    // Signed first (no side effects), then the token is spent and the agent inserted in one
    // transaction: a use is spent only by an enrollment that succeeds.
    let agent_id = random_id("ag-", 8);
    let issued = state
        .pki
        .sign_agent_csr(&request.csr_pem, &agent_id, state.settings.cert_validity())
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let enrolled = state
        .store
        .enroll_agent(&request.token, |grant| {
            // Labels bound to the token win over labels the agent asks for.
            let mut labels = request.labels.clone();
            labels.extend(grant.labels.clone());
            AgentRow {
                hostname: request.hostname.clone(),
                arch: request.arch.clone(),
                os: request.os.clone(),
                version: request.version.clone(),
                cert_serial: issued.serial_hex.clone(),
                cert_not_after_ms: issued.not_after_ms,
                ..AgentRow::enrolled(agent_id.clone(), grant.region.clone(), Labels(labels))
            }
        })
        .await?;
    let row = match enrolled {
        Ok(row) => row,
        Err(refusal) => {
            tracing::info!(reason = %refusal, "Enrollment refused");
            return Err(EnrollError::Refused(refusal));
        }
    };
    let labels = row.labels.0;
    let grant_region = row.region;
    tracing::info!(agent = %agent_id, region = %grant_region, "Agent enrolled");
    // Events naming the new agent's host map to it from now on.
    state.hosts.invalidate().await;
    Ok(EnrollResponse {
        agent_id,
        region: grant_region,
        labels,
        cert_pem: issued.cert_pem,
        ca_pem: state.pki.ca_pem().to_owned(),
        mqtt_addr: state.mqtt_public_addr.clone(),
        server_name: state.settings.public_host.clone(),
    })
}

/// A request for an enrollment token (the body of `POST /api/v1/enrollment-tokens`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub region: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many agents may enroll with it (default 1).
    #[serde(default = "one")]
    pub uses: i64,
    /// Lifetime in seconds (default one day).
    #[serde(default = "one_day_s")]
    pub ttl_s: i64,
}

fn one() -> i64 {
    1
}

fn one_day_s() -> i64 {
    86_400
}

/// Validates the fields of a token request.
///
/// # Errors
/// [`EnrollError::Invalid`] naming the field.
pub fn validate_token_request(request: &CreateTokenRequest) -> Result<(), EnrollError> {
    if !topic::valid_id(&request.region) {
        return Err(EnrollError::Invalid(
            "region must be 1-64 of a-z 0-9 - _ .".into(),
        ));
    }
    valid_labels(&request.labels)?;
    if !(1..=100_000).contains(&request.uses) {
        return Err(EnrollError::Invalid("uses must be 1..=100000".into()));
    }
    if !(60..=31_536_000).contains(&request.ttl_s) {
        return Err(EnrollError::Invalid(
            "ttl_s must be between 60 s and one year".into(),
        ));
    }
    Ok(())
}

/// Validates a token request and creates the token; returns it and its secret (shown once).
///
/// # Errors
/// Invalid fields, or the store.
pub async fn create_token(
    store: &Store,
    request: &CreateTokenRequest,
) -> Result<(EnrollmentTokenRow, String), EnrollError> {
    validate_token_request(request)?;
    Ok(store
        .create_enrollment_token(
            &request.region,
            &request.labels,
            request.uses,
            request.ttl_s,
        )
        .await?)
}

/// Revokes an agent everywhere: store, front door, retained topics, assignments.
///
/// # Errors
/// [`EnrollError::NotFound`] for unknown or already revoked agents, or the store.
pub async fn revoke_agent(state: &AppState, id: &str) -> Result<(), EnrollError> {
    if !state.store.revoke_agent(id).await? {
        return Err(EnrollError::NotFound(format!(
            "agent {id:?} (or it is already revoked)"
        )));
    }
    state.registry.revoke(id);
    tracing::info!(agent = %id, "Agent revoked");
    let _ = state
        .publisher
        .publish(&topic::agent(id, AgentTopic::Config), Vec::new(), true)
        .await;
    let _ = state
        .publisher
        .publish(&topic::agent(id, AgentTopic::Status), Vec::new(), true)
        .await;
    crate::assign::reconcile(state).await?;
    Ok(())
}
