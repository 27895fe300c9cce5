//! Check routes: create, read, update, delete (the logic is in [`crate::checks`]).
//!
//! Viewers read checks with every field that can hold a secret redacted
//! ([`vantage_mqtt::CheckKind::redacted`]); operators and admins, who write checks, read them
//! whole.

use axum::Json;
use axum::extract::State;
use axum::response::NoContent;

use super::openapi::Created;
use super::{ApiError, ApiJson, ApiPath, Caller, IdPath};
use crate::AppState;
use crate::checks::{self, CheckDefinition};
use crate::store::Role;

/// A check as `caller` may read it: whole for operators and admins, secrets redacted below.
fn shown_to(caller: &Caller, mut body: CheckDefinition) -> CheckDefinition {
    if caller.role < Role::Operator {
        body.kind = body.kind.redacted();
    }
    body
}

/// `POST /api/v1/checks`.
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CheckDefinition>,
) -> Result<Created<CheckDefinition>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Created(checks::create(&state, body).await?))
}

/// `GET /api/v1/checks`.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<CheckDefinition>>, ApiError> {
    caller.require(Role::Viewer)?;
    let all = checks::list(&state).await?;
    Ok(Json(
        all.into_iter()
            .map(|body| shown_to(&caller, body))
            .collect(),
    ))
}

/// `GET /api/v1/checks/{id}`.
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<Json<CheckDefinition>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(shown_to(&caller, checks::get(&state, &id).await?)))
}

/// `PUT /api/v1/checks/{id}`: replaces the definition.
pub async fn update(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
    ApiJson(body): ApiJson<CheckDefinition>,
) -> Result<Json<CheckDefinition>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(checks::update(&state, &id, body).await?))
}

/// `DELETE /api/v1/checks/{id}`.
pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(IdPath { id }): ApiPath<IdPath>,
) -> Result<NoContent, ApiError> {
    caller.require(Role::Operator)?;
    checks::delete(&state, &id).await?;
    Ok(NoContent)
}
