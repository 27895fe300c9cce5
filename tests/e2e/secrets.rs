//! Secrets stay with the roles that may see them: viewers read checks, results, the live feed
//! and the retained MQTT status topics without header values, bodies, send steps, URL
//! credentials, query values or chain RPC paths; API tokens are listed without secrets and a
//! revoked one is refused at once, over HTTP and MQTT.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use vantage_tests::{Agent, Backend, ControlPlane, LiveSocket, TestStore};

/// Every secret the checks below carry; none may reach a viewer.
const SECRETS: [&str; 7] = [
    "URLSECRET",
    "HDRSECRET",
    "BODYSECRET",
    "CHAINSECRET",
    "TCPSECRET",
    "pw-SECRET",
    "QSECRET",
];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

/// An HTTP server whose every path redirects to one absolute URL carrying credentials and a
/// token in its query, so the probe's reason ends as "redirect loop at <that URL>".
async fn redirect_loop_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let location = format!("http://user:pw-SECRET@127.0.0.1:{port}/loop?token=QSECRET");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                loop {
                    let Ok(n) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let response = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// The live feed as a WebSocket with `token` (the harness's helper uses the admin token).
async fn live_socket_as(cp: &ControlPlane, token: &str, query: &str) -> anyhow::Result<LiveSocket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request =
        format!("wss://127.0.0.1:{}/api/v1/live?{query}", cp.http_port).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let tls = vantage_agent::tls::pinned_client(&cp.ca_pem)?;
    let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        true,
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
            tls,
        ))),
    )
    .await?;
    Ok(socket)
}

/// The text of the first live message that mentions a redirect loop.
async fn next_loop_result(socket: &mut LiveSocket) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.contains("redirect loop") => {
                    return Ok(text.to_string());
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("live feed ended: {other:?}"),
            }
        }
    })
    .await
    .context("no live result with the redirect loop")?
}

async fn api_token(cp: &ControlPlane, role: &str, name: &str) -> anyhow::Result<(String, String)> {
    let (status, body) = cp
        .post("/api/v1/api-tokens", json!({"role": role, "name": name}))
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    Ok((
        body["id"].as_str().context("id")?.to_owned(),
        body["token"].as_str().context("token")?.to_owned(),
    ))
}

/// A viewer MQTT client (no certificate, the API token as password).
fn mqtt_viewer(
    cp: &ControlPlane,
    token: &str,
) -> anyhow::Result<(rumqttc::AsyncClient, rumqttc::EventLoop)> {
    let tls = vantage_agent::tls::pinned_client(&cp.ca_pem)?;
    let mut options = vantage_tests::tls_options("dashboard", cp.mqtt_port, tls);
    options.set_credentials("viewer", token);
    Ok(rumqttc::AsyncClient::new(options, 16))
}

crate::both_backends!(
    viewers_never_see_check_secrets,
    viewers_never_see_check_secrets
);

/// Header values, bodies, send steps, URL query values and chain RPC paths are redacted in
/// viewers' answers and shown whole to operators and admins; a URL with credentials that a
/// probe echoes in its reason reaches viewers scrubbed, in the API, the live feed and the
/// retained MQTT status topic; a viewer's redacted copy cannot be written back.
async fn viewers_never_see_check_secrets(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let port = redirect_loop_server().await?;
    let web = json!({
        "id": "secret-web", "name": "web", "interval_s": 2, "timeout_ms": 1000,
        "regions": ["europe"],
        "kind": {"type": "http", "method": "POST",
                 "url": format!("http://127.0.0.1:{port}/start?api_key=URLSECRET&plain=1"),
                 "headers": {"Authorization": "Bearer HDRSECRET"},
                 "body": "password=BODYSECRET"}
    });
    let chain = json!({
        "id": "secret-chain", "name": "rpc", "interval_s": 60, "timeout_ms": 1000,
        "regions": ["nowhere"],
        "kind": {"type": "chain", "chain": "evm",
                 "url": "https://eth.example/v3/CHAINSECRET",
                 "reference_url": "https://ref.example/rpc?apikey=CHAINSECRET"}
    });
    let tcp = json!({
        "id": "secret-tcp", "name": "redis", "interval_s": 60, "timeout_ms": 1000,
        "regions": ["nowhere"],
        "kind": {"type": "tcp", "host": "127.0.0.1", "port": 6379,
                 "steps": [{"send": "AUTH TCPSECRET\r\n"}, {"expect": "^\\+OK"}]}
    });
    for check in [&web, &chain, &tcp] {
        let (status, body) = cp.post("/api/v1/checks", check.clone()).await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let (_, viewer) = api_token(&cp, "viewer", "dash").await?;
    let (_, operator) = api_token(&cp, "operator", "ops").await?;
    let get = reqwest::Method::GET;

    // Definitions: a viewer sees the shape with the mark, operators and admins the values.
    let (status, listed) = cp
        .request(get.clone(), "/api/v1/checks", Some(&viewer), None)
        .await?;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    assert_no_secret("the viewer's check list", &listed.to_string());
    let (status, one) = cp
        .request(
            get.clone(),
            "/api/v1/checks/secret-web",
            Some(&viewer),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{one}");
    assert_no_secret("the viewer's check", &one.to_string());
    assert_eq!(one["kind"]["headers"]["Authorization"], "<redacted>");
    assert_eq!(one["kind"]["body"], "<redacted>");
    assert_eq!(
        one["kind"]["url"],
        format!("http://127.0.0.1:{port}/start?api_key=<redacted>&plain=<redacted>")
    );
    assert_eq!(one["kind"]["method"], "POST", "the rest stays readable");
    for token in [&operator, &cp.admin_token] {
        let (status, whole) = cp
            .request(get.clone(), "/api/v1/checks", Some(token), None)
            .await?;
        assert_eq!(status, 200);
        let text = whole.to_string();
        for secret in [
            "URLSECRET",
            "HDRSECRET",
            "BODYSECRET",
            "CHAINSECRET",
            "TCPSECRET",
        ] {
            assert!(text.contains(secret), "operators and admins see {secret}");
        }
    }

    // A viewer's copy written back by an operator is refused and changes nothing.
    let (status, body) = cp
        .request(
            reqwest::Method::PUT,
            "/api/v1/checks/secret-web",
            Some(&operator),
            Some(one.clone()),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("redaction mark")),
        "{body}"
    );
    let (_, stored) = cp.get("/api/v1/checks/secret-web").await?;
    assert_eq!(
        stored["kind"]["headers"]["Authorization"],
        "Bearer HDRSECRET"
    );

    // Results: the probe's reason echoes the redirect URL with its credentials.
    let mut viewer_live = live_socket_as(&cp, &viewer, "kind=result&check=secret-web").await?;
    let mut admin_live = cp.live_socket("kind=result&check=secret-web").await?;
    let (mqtt, mut mqtt_events) = mqtt_viewer(&cp, &viewer)?;
    vantage_tests::connect(&mut mqtt_events).await?;
    mqtt.subscribe("vantage/v1/status/#", rumqttc::QoS::AtLeastOnce)
        .await?;
    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    agent.wait_enrolled().await?;

    let admin_text = next_loop_result(&mut admin_live)
        .await
        .with_context(|| agent.log())?;
    assert!(
        admin_text.contains("pw-SECRET") && admin_text.contains("QSECRET"),
        "the reason really carries the secret URL (admins see it): {admin_text}"
    );
    let viewer_text = next_loop_result(&mut viewer_live).await?;
    assert_no_secret("the viewer's live feed", &viewer_text);
    assert!(
        viewer_text.contains(&format!(
            "redirect loop at http://<redacted>@127.0.0.1:{port}/loop?token=<redacted>"
        )),
        "{viewer_text}"
    );

    let (status, results) = cp
        .request(
            get.clone(),
            "/api/v1/results?check=secret-web",
            Some(&viewer),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert!(
        results
            .to_string()
            .contains("redirect loop at http://<redacted>@"),
        "{results}"
    );
    assert_no_secret("the viewer's results", &results.to_string());
    let (_, admin_results) = cp.get("/api/v1/results?check=secret-web").await?;
    assert!(admin_results.to_string().contains("pw-SECRET"));
    let (status, statuses) = cp
        .request(get.clone(), "/api/v1/status/checks", Some(&viewer), None)
        .await?;
    assert_eq!(status, 200);
    assert!(statuses.to_string().contains("redirect loop"), "{statuses}");
    assert_no_secret("the viewer's check status", &statuses.to_string());

    // The retained status topic every viewer token can read.
    let reason = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) =
                mqtt_events.poll().await
                && p.topic == "vantage/v1/status/checks/secret-web/europe"
            {
                let view: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if let Some(reason) = view["reason"].as_str()
                    && reason.contains("redirect loop")
                {
                    return reason.to_owned();
                }
            }
        }
    })
    .await
    .context("no retained status with the redirect loop")?;
    assert_no_secret("the retained MQTT status", &reason);
    assert!(reason.contains("http://<redacted>@127.0.0.1"), "{reason}");
    Ok(())
}

crate::both_backends!(
    api_tokens_are_listed_and_revoked_at_once,
    api_tokens_are_listed_and_revoked_at_once
);

/// API tokens are listed (API and CLI) without secrets or hashes, admins only; revoking one
/// (API or CLI) refuses it on the very next request and at the next MQTT viewer login, and
/// closes the MQTT viewer sessions and live feeds open with it; bad revocations are clear
/// errors that change nothing.
async fn api_tokens_are_listed_and_revoked_at_once(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let get = reqwest::Method::GET;
    let delete = reqwest::Method::DELETE;
    let (api_id, api_secret) = api_token(&cp, "viewer", "dash").await?;
    let (ok, cli_secret, err) = cp.cli(&[
        "api-token",
        "create",
        "--role",
        "operator",
        "--name",
        "deploys",
    ])?;
    assert!(ok, "{err}");
    let cli_secret = cli_secret.trim().to_owned();
    let cli_id = err
        .split_whitespace()
        .find(|w| w.starts_with("at-"))
        .context("the CLI names the new token's id")?
        .to_owned();

    // The listing: ids, names, roles, times; no secret and no hash.
    let (status, listed) = cp.get("/api/v1/api-tokens").await?;
    assert_eq!(status, 200, "{listed}");
    let rows = listed.as_array().context("a list")?;
    assert_eq!(rows.len(), 3, "bootstrap admin, dash, deploys: {listed}");
    let dash = rows
        .iter()
        .find(|r| r["id"] == api_id.as_str())
        .context("dash listed")?;
    assert_eq!(dash["name"], "dash");
    assert_eq!(dash["role"], "viewer");
    assert!(dash["created_at_ms"].as_i64().is_some_and(|t| t > 0));
    assert!(dash["revoked_at_ms"].is_null());
    let pool = cp.store_pool().await?;
    let hashes: Vec<(String,)> = sqlx::query_as("SELECT token_hash FROM api_tokens")
        .fetch_all(&pool)
        .await?;
    let text = listed.to_string();
    for secret in [&api_secret, &cli_secret, &cp.admin_token]
        .into_iter()
        .chain(hashes.iter().map(|(h,)| h))
    {
        assert!(!text.contains(secret.as_str()), "listing shows {secret}");
    }
    let (ok, cli_listing, err) = cp.cli(&["api-token", "list"])?;
    assert!(ok, "{err}");
    assert!(
        cli_listing.contains(&format!("{api_id}\tviewer\tdash"))
            && cli_listing.contains(&format!("{cli_id}\toperator\tdeploys")),
        "{cli_listing}"
    );
    for secret in [&api_secret, &cli_secret, &cp.admin_token]
        .into_iter()
        .chain(hashes.iter().map(|(h,)| h))
    {
        assert!(!cli_listing.contains(secret.as_str()), "CLI lists {secret}");
    }
    // Only admins list and revoke.
    for path in [
        "/api/v1/api-tokens".to_owned(),
        format!("/api/v1/api-tokens/{api_id}"),
    ] {
        let method = if path.ends_with("tokens") {
            get.clone()
        } else {
            delete.clone()
        };
        let (status, body) = cp.request(method, &path, Some(&cli_secret), None).await?;
        assert_eq!(status, 403, "an operator on {path}: {body}");
    }

    // The viewer works, over HTTP and MQTT, until revoked through the API.
    let (status, _) = cp
        .request(get.clone(), "/api/v1/checks", Some(&api_secret), None)
        .await?;
    assert_eq!(status, 200);
    let (_held, mut held) = mqtt_viewer(&cp, &api_secret)?;
    vantage_tests::connect(&mut held).await?;
    let mut live = live_socket_as(&cp, &api_secret, "kind=result").await?;
    let (status, body) = cp
        .request(
            delete.clone(),
            &format!("/api/v1/api-tokens/{api_id}"),
            Some(&cp.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 204, "{body}");
    let (status, body) = cp
        .request(get.clone(), "/api/v1/checks", Some(&api_secret), None)
        .await?;
    assert_eq!(status, 401, "the very next request is refused: {body}");
    let (_c, mut events) = mqtt_viewer(&cp, &api_secret)?;
    let error = vantage_tests::connect(&mut events)
        .await
        .expect_err("a revoked token logs in over MQTT")
        .to_string();
    assert!(error.contains("BadUserNamePassword"), "{error}");
    // What was already open with it closes too.
    vantage_tests::expect_closed(&mut held, Duration::from_secs(10)).await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match live.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the live feed of a revoked token stays open");
    let (_, listed) = cp.get("/api/v1/api-tokens").await?;
    let dash = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == api_id.as_str()))
        .context("dash still listed")?;
    assert!(dash["revoked_at_ms"].as_i64().is_some(), "{dash}");

    // Revoking again, or an unknown id: 404, nothing changes.
    for id in [api_id.as_str(), "at-nope"] {
        let (status, body) = cp
            .request(
                delete.clone(),
                &format!("/api/v1/api-tokens/{id}"),
                Some(&cp.admin_token),
                None,
            )
            .await?;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }

    // Through the CLI (which writes the store directly): refused at once by the server too.
    let (status, _) = cp
        .request(get.clone(), "/api/v1/checks", Some(&cli_secret), None)
        .await?;
    assert_eq!(status, 200);
    let (_held, mut held) = mqtt_viewer(&cp, &cli_secret)?;
    vantage_tests::connect(&mut held).await?;
    let (ok, out, err) = cp.cli(&["api-token", "revoke", &cli_id])?;
    assert!(ok && out.contains("revoked"), "{out} {err}");
    // The server learns of it from the store within its 2 s refresh.
    vantage_tests::expect_closed(&mut held, Duration::from_secs(10)).await?;
    let (status, _) = cp
        .request(get.clone(), "/api/v1/checks", Some(&cli_secret), None)
        .await?;
    assert_eq!(status, 401);
    let (ok, _, err) = cp.cli(&["api-token", "revoke", &cli_id])?;
    assert!(!ok && err.contains("already revoked"), "{err}");
    let (ok, _, err) = cp.cli(&["api-token", "revoke", "at-nope"])?;
    assert!(!ok && err.contains("does not exist"), "{err}");
    let (ok, cli_listing, _) = cp.cli(&["api-token", "list"])?;
    assert!(ok);
    assert_eq!(
        cli_listing.matches("revoked_at_ms=").count(),
        2,
        "{cli_listing}"
    );
    // The admin token is untouched.
    let (status, _) = cp.get("/api/v1/checks").await?;
    assert_eq!(status, 200);
    Ok(())
}
