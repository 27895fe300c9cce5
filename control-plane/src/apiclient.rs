//! The CLI's client of a running control plane's HTTPS API, for the commands whose effects
//! must pass through the server (announced on the live feed and MQTT, validated once, written
//! by the server's own store writer).
//!
//! Where the server is: `--api-url` (`VANTAGE_API_URL`), else `https://127.0.0.1:<port>` from
//! the `ports.json` the server writes into its data dir. The CA: `--ca-file`
//! (`VANTAGE_CA_FILE`), else the data dir's `pki/ca.pem`. The token never comes from argv:
//! `VANTAGE_API_TOKEN`, else the data dir's `admin-token` file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// How the CLI reaches the API.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The API's base URL, e.g. https://cp.example.net:8443 (default: this machine's server,
    /// found through the data dir).
    #[arg(long, env = "VANTAGE_API_URL")]
    pub api_url: Option<String>,
    /// The CA that signed the server's certificate (default: <data dir>/pki/ca.pem).
    #[arg(long, env = "VANTAGE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    #[arg(long, env = "VANTAGE_DATA_DIR", default_value = "vantage-data")]
    pub data_dir: PathBuf,
}

/// A connected client; see the module docs.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

impl ApiClient {
    /// Finds the server, its CA and a token (see the module docs).
    ///
    /// # Errors
    /// Nothing says where the server is, or the CA or token cannot be read.
    pub fn connect(args: &ApiArgs) -> anyhow::Result<ApiClient> {
        let base = match &args.api_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let path = args.data_dir.join(crate::app::PORTS_FILE);
                let ports: Value =
                    serde_json::from_str(&read(&path, "the server's ports").context(
                        "is `vantage serve` running with this --data-dir? Otherwise pass --api-url",
                    )?)?;
                let port = ports["http_port"]
                    .as_u64()
                    .with_context(|| format!("{} has no http_port", path.display()))?;
                format!("https://127.0.0.1:{port}")
            }
        };
        let ca_path = args
            .ca_file
            .clone()
            .unwrap_or_else(|| args.data_dir.join("pki").join("ca.pem"));
        let ca = reqwest::Certificate::from_pem(read(&ca_path, "the CA")?.as_bytes())
            .with_context(|| format!("{} is not a PEM certificate", ca_path.display()))?;
        let token = match std::env::var("VANTAGE_API_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => read(
                &args.data_dir.join(crate::app::ADMIN_TOKEN_FILE),
                "the admin token (or set VANTAGE_API_TOKEN)",
            )?
            .trim()
            .to_owned(),
        };
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(ApiClient { base, token, http })
    }

    /// Sends a request to `/api/v1{path}`; the answer's JSON on success (`null` for an empty
    /// body).
    ///
    /// # Errors
    /// The server cannot be reached, or it refused: the error carries its status and message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = json["error"]["message"]
                .as_str()
                .map_or_else(|| json.to_string(), str::to_owned);
            anyhow::bail!("{method} {path}: {status}: {message}");
        }
        Ok(json)
    }
}
