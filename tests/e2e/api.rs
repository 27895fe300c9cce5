//! The HTTP API's refusals: authentication, roles, invalid bodies and queries, unknown ids.

use serde_json::{Value, json};
use vantage_tests::{Backend, ControlPlane, TestStore};

fn assert_json_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"]["code"].is_string(),
        "not a JSON error: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
}

crate::both_backends!(
    refusals_are_json_with_the_right_status,
    refusals_are_json_with_the_right_status
);

async fn refusals_are_json_with_the_right_status(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // No token, a wrong token.
    let (status, body) = cp
        .request(get.clone(), "/api/v1/agents", None, None)
        .await?;
    assert_json_error(status, &body, 401);
    let (status, body) = cp
        .request(get.clone(), "/api/v1/checks", Some("vat_wrong"), None)
        .await?;
    assert_json_error(status, &body, 401);

    // A viewer reads but may not write.
    let (_, viewer) = cp
        .post("/api/v1/api-tokens", json!({"role": "viewer"}))
        .await?;
    let viewer = viewer["token"].as_str().unwrap_or_default().to_owned();
    let (status, _) = cp
        .request(get.clone(), "/api/v1/checks", Some(&viewer), None)
        .await?;
    assert_eq!(status, 200);
    let check = json!({"name": "x", "kind": {"type": "tcp", "host": "127.0.0.1", "port": 1}, "regions": ["europe"]});
    let (status, body) = cp
        .request(
            post.clone(),
            "/api/v1/checks",
            Some(&viewer),
            Some(check.clone()),
        )
        .await?;
    assert_json_error(status, &body, 403);
    let (status, body) = cp
        .request(
            post.clone(),
            "/api/v1/enrollment-tokens",
            Some(&viewer),
            Some(json!({"region": "europe"})),
        )
        .await?;
    assert_json_error(status, &body, 403);
    let (status, body) = cp
        .request(
            reqwest::Method::DELETE,
            "/api/v1/agents/ag-x",
            Some(&viewer),
            None,
        )
        .await?;
    assert_json_error(status, &body, 403);

    // Invalid bodies change nothing.
    let (_, before) = cp.get("/api/v1/checks").await?;
    for (body, expected) in [
        (json!({"name": "x"}), 422),
        (
            json!({"name": "x", "kind": {"type": "gopher"}, "regions": ["europe"]}),
            422,
        ),
        (
            json!({"name": "x", "kind": {"type": "tcp", "host": "h", "port": 0}, "regions": ["europe"]}),
            422,
        ),
        (
            json!({"name": "x", "kind": {"type": "http", "url": "ftp://x"}, "regions": ["europe"]}),
            422,
        ),
        (
            json!({"name": "x", "kind": {"type": "tcp", "host": "h", "port": 1}, "regions": []}),
            422,
        ),
        (
            json!({"name": "x", "kind": {"type": "tcp", "host": "h", "port": 1}, "regions": ["Europe!"]}),
            422,
        ),
        (
            json!({"name": "x", "kind": {"type": "tcp", "host": "h", "port": 1}, "regions": ["eu"], "unknown": 1}),
            422,
        ),
        (
            json!({"name": "x", "kind": {"type": "tcp", "host": "h", "port": 1}, "regions": ["eu", "us", "eu"]}),
            422,
        ),
        (json!([1, 2, 3]), 422),
    ] {
        let (status, reply) = cp.post("/api/v1/checks", body.clone()).await?;
        assert_json_error(status, &reply, expected);
    }
    let response = cp
        .client
        .post(cp.url("/api/v1/checks"))
        .bearer_auth(&cp.admin_token)
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_json_error(status, &body, 400);
    let (_, after) = cp.get("/api/v1/checks").await?;
    assert_eq!(before, after, "an invalid body changed the checks");

    // Conflicts, unknown ids, bad queries, unknown routes.
    let (status, _) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "dup", "name": "x",
        "kind": {"type": "tcp", "host": "127.0.0.1", "port": 1}, "regions": ["europe"]}),
        )
        .await?;
    assert_eq!(status, 201);
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "dup", "name": "x",
        "kind": {"type": "tcp", "host": "127.0.0.1", "port": 1}, "regions": ["europe"]}),
        )
        .await?;
    assert_json_error(status, &body, 409);
    let (status, body) = cp.get("/api/v1/checks/nope").await?;
    assert_json_error(status, &body, 404);
    let (status, body) = cp.get("/api/v1/agents/nope").await?;
    assert_json_error(status, &body, 404);
    let (status, body) = cp.get("/api/v1/results?limit=0").await?;
    assert_json_error(status, &body, 400);
    let (status, body) = cp.get("/api/v1/results?limit=abc").await?;
    assert_json_error(status, &body, 400);
    let (status, body) = cp.get("/api/v1/results?from_ms=10&to_ms=5").await?;
    assert_json_error(status, &body, 400);
    let (status, body) = cp.get("/api/v1/nothing-here").await?;
    assert_json_error(status, &body, 404);
    let (status, body) = cp
        .post(
            "/api/v1/enrollment-tokens",
            json!({"region": "europe", "uses": 0}),
        )
        .await?;
    assert_json_error(status, &body, 422);
    let (status, body) = cp
        .post("/api/v1/api-tokens", json!({"role": "root"}))
        .await?;
    assert_json_error(status, &body, 422);

    // Check CRUD round trip.
    let (status, body) = cp.get("/api/v1/checks/dup").await?;
    assert_eq!(status, 200);
    assert_eq!(body["kind"]["type"], "tcp");
    let (status, body) = cp
        .request(reqwest::Method::PUT, "/api/v1/checks/dup", Some(&cp.admin_token), Some(json!({
            "name": "renamed", "kind": {"type": "tcp", "host": "127.0.0.1", "port": 2}, "regions": ["europe", "asia"]})))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "renamed");
    let (status, _) = cp
        .request(
            reqwest::Method::DELETE,
            "/api/v1/checks/dup",
            Some(&cp.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 204);
    let (_, regions) = cp.get("/api/v1/regions").await?;
    assert!(
        regions
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["id"] == "asia"))
    );

    // Public endpoints.
    let (status, doc) = cp
        .request(get.clone(), "/api/v1/openapi.json", None, None)
        .await?;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/v1/checks"]["post"].is_object());
    let text = cp.prometheus().await?;
    assert!(text.contains("# TYPE vantage_ingest_messages_total counter"));
    // Secrets never come back: token listings hold no secret, errors echo none.
    let (_, tokens) = cp.get("/api/v1/enrollment-tokens").await?;
    assert!(!tokens.to_string().contains("vet_"), "{tokens}");
    Ok(())
}

crate::both_backends!(
    checks_that_would_overflow_a_config_are_refused,
    checks_that_would_overflow_a_config_are_refused
);

/// Every agent of a region receives all of the region's checks in one desired config, which
/// an agent refuses beyond `MAX_CONFIG_BYTES`: the API refuses the check that would cross it,
/// and the agent keeps running the checks that fit.
async fn checks_that_would_overflow_a_config_are_refused(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let token = cp.enrollment_token("full", 1).await?;
    let agent = vantage_tests::Agent::start(&cp, &token, "")?;
    agent.wait_enrolled().await?;
    // HTTP checks with 60 KiB request bodies: sixteen of them are over the limit.
    let body = "x".repeat(60 * 1024);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut accepted = 0;
    let refusal = loop {
        let (status, answer) = cp
            .post(
                "/api/v1/checks",
                json!({
                    "id": format!("big-{accepted}"),
                    "name": "big",
                    "interval_s": 3600,
                    "timeout_ms": 1000,
                    "regions": ["full", "other"],
                    "kind": {"type": "http", "method": "POST", "url": format!("http://127.0.0.1:{closed}/"), "body": body},
                }),
            )
            .await?;
        if status != 201 {
            break (status, answer);
        }
        accepted += 1;
        anyhow::ensure!(accepted <= 16, "{accepted} big checks accepted");
    };
    assert_json_error(refusal.0, &refusal.1, 422);
    let message = refusal.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"full\"")
            && message.contains(&vantage_mqtt::MAX_CONFIG_BYTES.to_string()),
        "{message}"
    );
    let per_check = body.len() + 200;
    assert!(
        (accepted + 1) * per_check > vantage_mqtt::MAX_CONFIG_BYTES
            && accepted * body.len() < vantage_mqtt::MAX_CONFIG_BYTES,
        "refused after {accepted} checks"
    );
    let (_, checks) = cp.get("/api/v1/checks").await?;
    assert_eq!(checks.as_array().map(Vec::len), Some(accepted), "{checks}");
    // The agent applies the config with every accepted check and refuses none.
    let wanted = format!("n_checks={accepted}");
    vantage_tests::wait_for(
        "the full config applied",
        std::time::Duration::from_secs(20),
        || async {
            agent
                .log()
                .lines()
                .any(|l| l.contains("Applying desired config") && l.contains(&wanted))
                .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}", agent.log()))?;
    assert!(
        !agent.log().contains("Ignoring an invalid desired config"),
        "{}",
        agent.log()
    );
    assert_eq!(cp.counter("vantage_config_too_large_total").await?, 0);
    Ok(())
}
