//! Public status pages, served without login: `GET /status/{page}` (the page, drawn by
//! `ui/status.js`), `GET /status/{page}/data` (what it shows, from [`crate::status_page`]:
//! only checks labelled `status_page={page}`) and `GET /status/{page}/badge/{check}.svg`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Response};
use vantage_mqtt::{CheckState, topic};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{ApiError, ApiPath};
use crate::AppState;
use crate::status_page::{self, Page};
use crate::store::now_ms;

/// The `{page}` of a status page's path.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PagePath {
    #[schemars(regex(pattern = r"^[a-z0-9_-][a-z0-9_.-]{0,63}$"))]
    pub page: String,
}

/// The path of a badge: `{page}` and `{file}` (`{check}.svg`).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct BadgePath {
    #[schemars(regex(pattern = r"^[a-z0-9_-][a-z0-9_.-]{0,63}$"))]
    pub page: String,
    #[schemars(regex(pattern = r"^[a-z0-9_-][a-z0-9_.-]{0,63}\.svg$"))]
    pub file: String,
}

fn valid_page(page: &str) -> Result<(), ApiError> {
    if topic::valid_id(page) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "a status page's name is 1-64 of a-z 0-9 - _ .".into(),
        ))
    }
}

/// `GET /status/{page}`: the page (it reads its data from `/status/{page}/data`).
pub async fn html(ApiPath(PagePath { page }): ApiPath<PagePath>) -> Result<Response, ApiError> {
    valid_page(&page)?;
    Ok(super::ui::serve("status.html"))
}

/// `GET /status/{page}/data`.
pub async fn data(
    State(state): State<AppState>,
    ApiPath(PagePath { page }): ApiPath<PagePath>,
) -> Result<Json<Page>, ApiError> {
    valid_page(&page)?;
    status_page::page(&state.store, &page, now_ms())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("status page {page:?}")))
}

/// `GET /status/{page}/badge/{check}.svg`: the check's state, if it is public on `page`.
pub async fn badge(
    State(state): State<AppState>,
    ApiPath(BadgePath { page, file }): ApiPath<BadgePath>,
) -> Result<Response, ApiError> {
    valid_page(&page)?;
    let not_found = || ApiError::NotFound(format!("badge {file:?} on status page {page:?}"));
    let check_id = file
        .strip_suffix(".svg")
        .filter(|id| topic::valid_id(id))
        .ok_or_else(not_found)?;
    let check = state
        .store
        .get_check(check_id)
        .await?
        .filter(|c| c.labels.0.get(status_page::LABEL) == Some(&page))
        .ok_or_else(not_found)?;
    let state_now = match state.store.get_verdict(&check.id).await? {
        Some(verdict) => verdict.state,
        None if !check.enabled => CheckState::Paused,
        None => CheckState::Pending,
    };
    let svg = status_page::badge(&check.name, state_now);
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml; charset=utf-8"),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=30")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        svg,
    )
        .into_response())
}
