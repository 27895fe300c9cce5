//! Agents, enrollment and tokens: the routes check the caller and call
//! [`crate::enrollment`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::NoContent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vantage_mqtt::NodeState;

use super::openapi::Created;
use super::{ApiError, ApiJson, ApiPath, Caller, IdPath};
use crate::AppState;
use crate::enrollment::{CreateTokenRequest, EnrollRequest, EnrollResponse};
use crate::store::{AgentRow, Role};

/// An agent as the API shows it.
#[derive(Debug, Serialize, JsonSchema)]
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

/// Query of `GET /api/v1/agents`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionQuery {
    pub region: Option<String>,
}

/// `GET /api/v1/agents/{id}`.
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
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
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Operator)?;
    crate::enrollment::revoke_agent(&state, &id).await?;
    Ok(NoContent)
}

/// `POST /api/v1/enroll`: spends an enrollment token, signs the agent's CSR (no API token:
/// the enrollment token is the credential).
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Created<EnrollResponse>, ApiError> {
    Ok(Created(crate::enrollment::enroll(&state, request).await?))
}

/// The answer of `POST /api/v1/enrollment-tokens` (no `Debug`: it holds the secret).
#[derive(Serialize, JsonSchema)]
pub struct CreatedEnrollmentToken {
    /// The secret, shown this once.
    pub token: String,
    pub id: String,
    pub region: String,
    pub uses_left: i64,
    pub expires_at_ms: i64,
    pub snippets: Snippets,
}

/// Ways to install an agent with a new token; each is absent when it cannot be made, and
/// `unavailable` says why. No `Debug`: each embeds the token.
#[derive(Default, Serialize, JsonSchema)]
pub struct Snippets {
    /// A script for a root shell on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// cloud-init user-data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<String>,
    /// A `provision/ssh-install` line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_install: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// The answer of `POST /api/v1/api-tokens` (no `Debug`: it holds the secret).
#[derive(Serialize, JsonSchema)]
pub struct CreatedApiToken {
    /// The secret, shown this once.
    pub token: String,
    pub id: String,
    pub role: Role,
    pub name: String,
}

/// `POST /api/v1/enrollment-tokens`: the secret is in the answer, once.
pub async fn create_token(
    caller: Caller,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<Created<CreatedEnrollmentToken>, ApiError> {
    caller.require(Role::Operator)?;
    let (row, secret) = crate::enrollment::create_token(&state.store, &request).await?;
    let comment = format!(
        "Vantage agent for region {}: enrollment token {} ({} uses, expires at {} ms since the epoch)",
        row.region, row.id, row.uses_left, row.expires_at_ms
    );
    let snippets = snippets(&state, &headers, &uri, &secret, &comment);
    Ok(Created(CreatedEnrollmentToken {
        token: secret,
        id: row.id,
        region: row.region,
        uses_left: row.uses_left,
        expires_at_ms: row.expires_at_ms,
        snippets,
    }))
}

/// Ways to put an agent on a node with a new token, to copy: a script for a root shell and
/// cloud-init user-data (both need the release key of `--dist-dir`), and the `ssh-install`
/// line. The server URL is the one the caller reached this API at.
fn snippets(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
    token: &str,
    comment: &str,
) -> Snippets {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let server_url = format!("https://{host}");
    if let Err(reason) = crate::cloudinit::check_url("the Host header", &server_url) {
        return Snippets {
            unavailable: Some(reason),
            ..Snippets::default()
        };
    }
    let ca_file = state.settings.data_dir.join("pki").join("ca.pem");
    let ssh_install = format!(
        "VANTAGE_ENROLLMENT_TOKEN={token} provision/ssh-install --dist dist \\\n    --server-url {server_url} --ca-file {} root@NODE",
        ca_file.display()
    );
    let release_pub = state
        .settings
        .dist_dir
        .as_ref()
        .and_then(|dir| std::fs::read_to_string(dir.join("release.pub")).ok())
        .filter(|pem| pem.contains("-----BEGIN PUBLIC KEY-----"));
    let Some(release_pub) = release_pub else {
        return Snippets {
            ssh_install: Some(ssh_install),
            unavailable: Some("no release key: serve the artifacts with --dist-dir (image/build's output) for the shell and cloud-init snippets".into()),
            ..Snippets::default()
        };
    };
    let artifacts_url = format!("{server_url}/dist");
    let data = crate::cloudinit::UserData {
        server_url: &server_url,
        artifacts_url: &artifacts_url,
        ca_pem: state.pki.ca_pem(),
        release_pub_pem: &release_pub,
        token,
        comment,
    };
    Snippets {
        shell: Some(crate::cloudinit::shell(&data)),
        cloud_init: Some(crate::cloudinit::render(&data)),
        ssh_install: Some(ssh_install),
        unavailable: None,
    }
}

/// `GET /api/v1/enrollment-tokens`.
pub async fn list_tokens(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::store::EnrollmentTokenRow>>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(state.store.list_enrollment_tokens().await?))
}

/// `DELETE /api/v1/enrollment-tokens/{id}`.
pub async fn delete_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Operator)?;
    if state.store.delete_enrollment_token(&id).await? {
        Ok(NoContent)
    } else {
        Err(ApiError::NotFound(format!("enrollment token {id:?}")))
    }
}

/// Body of `POST /api/v1/api-tokens`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    pub role: Role,
    #[serde(default)]
    pub name: String,
}

/// `POST /api/v1/api-tokens` (admin): the secret is in the answer, once.
pub async fn create_api_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateApiTokenRequest>,
) -> Result<Created<CreatedApiToken>, ApiError> {
    caller.require(Role::Admin)?;
    let role = request.role;
    crate::enrollment::short_text("name", &request.name)?;
    let (row, secret) = state.store.create_api_token(role, &request.name).await?;
    Ok(Created(CreatedApiToken {
        token: secret,
        id: row.id,
        role: row.role,
        name: row.name,
    }))
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
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Admin)?;
    if state.store.revoke_api_token(&id).await? {
        state.registry.revoke_token(&id);
        Ok(NoContent)
    } else {
        Err(ApiError::NotFound(format!(
            "live API token {id:?} (unknown or already revoked)"
        )))
    }
}
