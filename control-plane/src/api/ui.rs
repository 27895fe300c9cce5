//! The dashboard: its files (in `control-plane/ui/`, embedded in the binary, so it works
//! offline and without node) served under `/` and `/ui/`, and its sessions: `POST
//! /ui/session` trades an API token for an HttpOnly, Secure, SameSite=Strict session cookie;
//! `GET` says who the session is; `DELETE` signs out. Requests that carry the cookie act
//! with its token's role through the same routes as bearer tokens ([`super::Caller`]); those
//! that change anything must come from this origin ([`same_origin`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ApiError, ApiJson, Caller};
use crate::AppState;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "vantage_session";
/// How long a session lasts after sign-in.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;

/// One embedded file: (path under `/ui/`, content type, bytes).
type Asset = (&'static str, &'static str, &'static [u8]);

const ASSETS: &[Asset] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/app.css"),
    ),
    (
        "status.html",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/status.html"),
    ),
    (
        "status.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/status.js"),
    ),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../ui/vendor/uplot/LICENSE"),
    ),
];

/// Headers every dashboard file carries: no framing, no inline script, no referrer.
fn page_headers(content_type: &'static str) -> [(axum::http::HeaderName, HeaderValue); 6] {
    [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            axum::http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                 base-uri 'none'; form-action 'self'",
            ),
        ),
        (
            axum::http::header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ),
        (
            axum::http::header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ]
}

fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|(name, _, _)| *name == path)
}

/// `GET /`: the dashboard's page (every view is drawn from it).
pub async fn index() -> Response {
    file_response(asset("index.html"))
}

/// One embedded file by name (404 when there is none).
pub fn serve(name: &str) -> Response {
    file_response(asset(name))
}

/// `GET /ui/{*path}`: one embedded file.
pub async fn file(Path(path): Path<String>) -> Response {
    file_response(asset(&path))
}

fn file_response(found: Option<&'static Asset>) -> Response {
    match found {
        Some((_, content_type, bytes)) => (page_headers(content_type), *bytes).into_response(),
        None => ApiError::NotFound("file".into()).into_response(),
    }
}

/// The session secret in a request's cookies, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME && !value.is_empty() && value.len() <= 200)
                .then(|| value.to_owned())
        })
}

/// Whether a request's `Origin` names this server (`None` without an `Origin`). Over HTTP/2
/// the host is the URI's authority, not a `Host` header.
fn origin_is_ours(headers: &HeaderMap, uri: &axum::http::Uri) -> Option<bool> {
    let origin = headers.get(ORIGIN)?.to_str().ok();
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    Some(match (origin, host) {
        (Some(origin), Some(host)) => origin.eq_ignore_ascii_case(&format!("https://{host}")),
        _ => false,
    })
}

/// Whether a cookie-authenticated request may act: one that changes anything must name this
/// origin in `Origin` (browsers always send it on such requests), and any request that
/// names an origin must name this one. SameSite=Strict already keeps the cookie off
/// cross-site requests; this holds even for a browser that ignores it.
pub fn same_origin(parts: &Parts) -> bool {
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    origin_is_ours(&parts.headers, &parts.uri).unwrap_or(safe)
}

fn cookie(value: &str, max_age_s: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; Secure; SameSite=Strict"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("vantage_session=; Max-Age=0"))
}

/// Body of `POST /ui/session` (no `Debug`: it holds a token).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub token: String,
}

/// Who a dashboard session is.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct Session {
    /// `null` when nobody is signed in.
    pub role: Option<crate::store::Role>,
}

/// `POST /ui/session`: an API token in, a session cookie out.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    // A sign-in form on another site must not plant its own session here.
    if origin_is_ours(&headers, &uri) == Some(false) {
        return Err(ApiError::CrossSite);
    }
    let token = body.token.trim();
    if token.is_empty() || token.len() > 200 {
        return Err(ApiError::Unauthorized);
    }
    let found = state
        .store
        .api_token(token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let secret = state
        .store
        .create_session(&found.id, SESSION_TTL_MS)
        .await?;
    let mut response = Json(Session {
        role: Some(found.role),
    })
    .into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, cookie(&secret, SESSION_TTL_MS / 1000));
    Ok(response)
}

/// `GET /ui/session`: the signed-in role, or `null` when nobody is (the page then shows the
/// sign-in form; a refusal here would only be noise in the browser's console).
pub async fn whoami(caller: Result<Caller, ApiError>) -> Result<Json<Session>, ApiError> {
    match caller {
        Ok(caller) => Ok(Json(Session {
            role: Some(caller.role),
        })),
        Err(ApiError::Unauthorized) => Ok(Json(Session { role: None })),
        Err(other) => Err(other),
    }
}

/// `DELETE /ui/session`: signs out (the session ends on the server, the cookie is cleared).
pub async fn sign_out(
    _caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(secret) = session_cookie(&headers) {
        state.store.delete_session(&secret).await?;
    }
    let mut response = axum::http::StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(SET_COOKIE, cookie("", 0));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri("/api/v1/checks");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("a request").into_parts().0
    }

    #[test]
    fn cookie_requests_that_write_must_come_from_this_origin() {
        let host = ("host", "cp.example:8443");
        assert!(same_origin(&parts(Method::GET, &[host])));
        assert!(!same_origin(&parts(Method::POST, &[host])));
        assert!(same_origin(&parts(
            Method::POST,
            &[host, ("origin", "https://cp.example:8443")]
        )));
        assert!(!same_origin(&parts(
            Method::POST,
            &[host, ("origin", "https://evil.example")]
        )));
        assert!(!same_origin(&parts(
            Method::GET,
            &[host, ("origin", "http://cp.example:8443")]
        )));
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; vantage_session=vs_abc; b=2"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("vs_abc"));
        let long = format!("vantage_session={}", "x".repeat(300));
        headers.insert(COOKIE, HeaderValue::from_str(&long).expect("a header"));
        assert_eq!(session_cookie(&headers), None);
        let set = cookie("vs_abc", 60);
        let set = set.to_str().expect("ascii");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(flag), "{set}");
        }
    }

    #[test]
    fn every_embedded_file_is_served_and_others_are_not() {
        for (name, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{name}");
            assert!(asset(name).is_some());
        }
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }
}
