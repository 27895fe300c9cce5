//! `GET /dist/{file}`: the signed release artifacts (install.sh, SHA256SUMS and its signature,
//! agent tarballs, edge images) from `--dist-dir`, so nodes install from the control plane they
//! enroll with. No token: the files are public and signed; install.sh verifies them.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{ApiError, ApiPath};
use crate::AppState;

/// A plain file name: no separators, no leading dot, so nothing outside the directory.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The `{file}` of `/dist/{file}`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct FilePath {
    pub file: String,
}

/// Streams one artifact.
pub async fn file(
    State(state): State<AppState>,
    ApiPath(FilePath { file: name }): ApiPath<FilePath>,
) -> Result<Response, ApiError> {
    let Some(dir) = state.settings.dist_dir.as_ref() else {
        return Err(ApiError::NotFound("artifact (no --dist-dir)".into()));
    };
    if !valid_name(&name) {
        return Err(ApiError::NotFound("artifact".into()));
    }
    let path = dir.join(&name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!("artifact {name}")));
        }
        Err(error) => return Err(ApiError::Internal(error.into())),
    };
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if !meta.is_file() {
        return Err(ApiError::NotFound(format!("artifact {name}")));
    }
    let content_type = if name.ends_with(".sh") || name == "SHA256SUMS" || name.ends_with(".pub") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, meta.len().to_string()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn only_plain_names_are_served() {
        for good in [
            "install.sh",
            "SHA256SUMS",
            "vantage-agent-0.1.0-x86_64-linux.tar.gz",
        ] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "x%2f..",
            "a b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
