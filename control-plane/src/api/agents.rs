//! Agents, regions, enrollment and tokens.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use vantage_mqtt::{AgentTopic, NodeState, topic};

use super::{ApiError, ApiJson, Caller};
use crate::AppState;
use crate::store::{AgentRow, Labels, Role, TokenRefusal, now_ms, random_id};

/// An agent as the API shows it.
#[derive(Debug, Serialize)]
pub struct AgentView {
    pub id: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    pub arch: String,
    pub os: String,
    pub version: String,
    pub state: NodeState,
    pub last_seen_ms: Option<i64>,
    pub enrolled_at_ms: i64,
    pub revoked: bool,
    pub cert_not_after_ms: i64,
    pub config_revision: i64,
    pub last_seq: i64,
    pub next_seq: i64,
    pub spool_dropped_total: i64,
    pub spool_unsendable_total: i64,
    pub spool_write_errors_total: i64,
    /// Changes whenever the agent process restarts.
    pub boot_id: String,
}

impl From<AgentRow> for AgentView {
    fn from(row: AgentRow) -> Self {
        AgentView {
            labels: row.labels.0,
            revoked: row.revoked_at_ms.is_some(),
            id: row.id,
            region: row.region,
            hostname: row.hostname,
            arch: row.arch,
            os: row.os,
            version: row.version,
            state: row.state,
            last_seen_ms: row.last_seen_ms,
            enrolled_at_ms: row.enrolled_at_ms,
            cert_not_after_ms: row.cert_not_after_ms,
            config_revision: row.config_revision,
            last_seq: row.last_seq,
            next_seq: row.next_seq,
            spool_dropped_total: row.spool_dropped_total,
            spool_unsendable_total: row.spool_unsendable_total,
            spool_write_errors_total: row.spool_write_errors_total,
            boot_id: row.boot_id,
        }
    }
}

/// `GET /api/v1/agents?region=`.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    super::ApiQuery(query): super::ApiQuery<RegionQuery>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let agents = state.store.list_agents(query.region.as_deref()).await?;
    Ok(Json(agents.into_iter().map(AgentView::from).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionQuery {
    pub region: Option<String>,
}

/// `GET /api/v1/agents/{id}`.
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    caller.require(Role::Viewer)?;
    let agent = state
        .store
        .get_agent(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {id:?}")))?;
    Ok(Json(agent.into()))
}

/// `DELETE /api/v1/agents/{id}`: revokes the agent, closes its connection, clears its
/// retained config.
pub async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    revoke_agent(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes an agent everywhere: store, front door, retained topics, assignments.
///
/// # Errors
/// [`ApiError::NotFound`] for unknown or already revoked agents.
pub async fn revoke_agent(state: &AppState, id: &str) -> Result<(), ApiError> {
    if !state.store.revoke_agent(id).await? {
        return Err(ApiError::NotFound(format!(
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

/// Body of `POST /api/v1/enroll`.
#[derive(Deserialize)]
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

/// Answer of `POST /api/v1/enroll`.
#[derive(Debug, Serialize, Deserialize)]
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

fn valid_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > 32 {
        return Err(ApiError::Unprocessable("at most 32 labels".into()));
    }
    for (key, value) in labels {
        if !topic::valid_id(key) || value.len() > 256 || value.chars().any(char::is_control) {
            return Err(ApiError::Unprocessable(format!(
                "label {key:?} is not valid (keys: 1-64 of a-z 0-9 - _ .; values: at most 256 printable characters)"
            )));
        }
    }
    Ok(())
}

fn short_text(name: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(format!(
            "{name} must be at most 255 printable characters"
        )));
    }
    Ok(())
}

/// `POST /api/v1/enroll`: spends an enrollment token, signs the agent's CSR.
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    short_text("hostname", &request.hostname)?;
    short_text("arch", &request.arch)?;
    short_text("os", &request.os)?;
    short_text("version", &request.version)?;
    valid_labels(&request.labels)?;
    if request.csr_pem.len() > 16 * 1024
        || rcgen::CertificateSigningRequestParams::from_pem(&request.csr_pem).is_err()
    {
        return Err(ApiError::Unprocessable(
            "csr_pem is not a valid PEM certificate signing request".into(),
        ));
    }
    if request.token.is_empty() || request.token.len() > 200 {
        return Err(ApiError::Refused(TokenRefusal::Unknown.to_string()));
    }
    // Signed first (no side effects), then the token is spent and the agent inserted in one
    // transaction: a use is spent only by an enrollment that succeeds.
    let agent_id = random_id("ag-", 8);
    let issued = state
        .pki
        .sign_agent_csr(&request.csr_pem, &agent_id, state.settings.cert_validity())
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let enrolled = state
        .store
        .enroll_agent(&request.token, |grant| {
            // Labels bound to the token win over labels the agent asks for.
            let mut labels = request.labels.clone();
            labels.extend(grant.labels.clone());
            AgentRow {
                id: agent_id.clone(),
                region: grant.region.clone(),
                labels: Labels(labels),
                hostname: request.hostname.clone(),
                arch: request.arch.clone(),
                os: request.os.clone(),
                version: request.version.clone(),
                cert_serial: issued.serial_hex.clone(),
                cert_not_after_ms: issued.not_after_ms,
                state: NodeState::Offline,
                last_seen_ms: None,
                enrolled_at_ms: now_ms(),
                revoked_at_ms: None,
                config_revision: 0,
                last_seq: 0,
                next_seq: 0,
                spool_dropped_total: 0,
                spool_unsendable_total: 0,
                spool_write_errors_total: 0,
                boot_id: String::new(),
            }
        })
        .await?;
    let row = match enrolled {
        Ok(row) => row,
        Err(refusal) => {
            tracing::info!(reason = %refusal, "Enrollment refused");
            return Err(ApiError::Refused(refusal.to_string()));
        }
    };
    let labels = row.labels.0;
    let grant_region = row.region;
    tracing::info!(agent = %agent_id, region = %grant_region, "Agent enrolled");
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            agent_id,
            region: grant_region,
            labels,
            cert_pem: issued.cert_pem,
            ca_pem: state.pki.ca_pem().to_owned(),
            mqtt_addr: state.mqtt_public_addr.clone(),
            server_name: state.settings.public_host.clone(),
        }),
    ))
}

/// Body of `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Deserialize)]
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
/// [`ApiError::Unprocessable`] naming the field.
pub fn validate_token_request(request: &CreateTokenRequest) -> Result<(), ApiError> {
    if !topic::valid_id(&request.region) {
        return Err(ApiError::Unprocessable(
            "region must be 1-64 of a-z 0-9 - _ .".into(),
        ));
    }
    valid_labels(&request.labels)?;
    if !(1..=100_000).contains(&request.uses) {
        return Err(ApiError::Unprocessable("uses must be 1..=100000".into()));
    }
    if !(60..=31_536_000).contains(&request.ttl_s) {
        return Err(ApiError::Unprocessable(
            "ttl_s must be between 60 s and one year".into(),
        ));
    }
    Ok(())
}

/// `POST /api/v1/enrollment-tokens`: the secret is in the answer, once.
pub async fn create_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Role::Operator)?;
    validate_token_request(&request)?;
    let (row, secret) = state
        .store
        .create_enrollment_token(
            &request.region,
            &request.labels,
            request.uses,
            request.ttl_s,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": secret, "id": row.id, "region": row.region,
            "uses_left": row.uses_left, "expires_at_ms": row.expires_at_ms })),
    ))
}

/// `GET /api/v1/enrollment-tokens`.
pub async fn list_tokens(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(json!(state.store.list_enrollment_tokens().await?)))
}

/// `DELETE /api/v1/enrollment-tokens/{id}`.
pub async fn delete_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    if state.store.delete_enrollment_token(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("enrollment token {id:?}")))
    }
}

/// Body of `POST /api/v1/api-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    pub role: String,
    #[serde(default)]
    pub name: String,
}

/// `POST /api/v1/api-tokens` (admin): the secret is in the answer, once.
pub async fn create_api_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateApiTokenRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Role::Admin)?;
    let role = Role::parse(&request.role)
        .ok_or_else(|| ApiError::Unprocessable("role must be viewer, operator or admin".into()))?;
    short_text("name", &request.name)?;
    let (row, secret) = state.store.create_api_token(role, &request.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": secret, "id": row.id, "role": row.role, "name": row.name })),
    ))
}

/// `GET /api/v1/api-tokens` (admin): id, name, role, creation and revocation times; never a
/// secret or its hash.
pub async fn list_api_tokens(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::store::ApiTokenRow>>, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(state.store.list_api_tokens().await?))
}

/// `DELETE /api/v1/api-tokens/{id}` (admin): revokes the token; the very next request or
/// MQTT login with it is refused, and its open live feeds and MQTT viewer sessions close.
pub async fn revoke_api_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    if state.store.revoke_api_token(&id).await? {
        state.registry.revoke_token(&id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "live API token {id:?} (unknown or already revoked)"
        )))
    }
}
