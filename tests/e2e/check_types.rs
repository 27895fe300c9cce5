//! Every check type goes through the API into an agent's config and comes back as results
//! with its values; invalid specifications are refused at creation, naming the field.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, wait_for};

crate::both_backends!(
    each_check_type_reports_through_an_agent,
    each_check_type_reports_through_an_agent
);

async fn each_check_type_reports_through_an_agent(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let banner = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = banner.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = banner.accept().await {
            let _ = stream.write_all(b"220 test ESMTP\r\n").await;
        }
    });
    let checks = [
        json!({"id": "t-tcp", "kind": {"type": "tcp", "host": "127.0.0.1", "port": port, "steps": [{"expect": "^220 "}]}}),
        json!({"id": "t-icmp", "kind": {"type": "icmp", "host": "127.0.0.1", "count": 2, "interval_ms": 50}}),
        json!({"id": "t-process", "kind": {"type": "process", "name": "vantage-agent"}}),
        json!({"id": "t-http", "kind": {"type": "http", "url": format!("{}/healthz", cp.api_url()),
            "tls_verify": false, "assertions": [{"json_pointer": {"pointer": "/status", "equals": "ok"}}]}}),
    ];
    for check in &checks {
        let mut body = check.clone();
        body["name"] = json!("typed");
        body["interval_s"] = json!(2);
        body["timeout_ms"] = json!(1500);
        body["regions"] = json!(["europe"]);
        let (status, reply) = cp.post("/api/v1/checks", body).await?;
        anyhow::ensure!(status == 201, "{status} {reply}");
    }
    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    let expectations: [(&str, &str); 4] = [
        ("t-tcp", "connect_ms"),
        ("t-icmp", "loss_pct"),
        ("t-process", "process_count"),
        ("t-http", "body_bytes"),
    ];
    for (check, value) in expectations {
        let row = wait_for(check, Duration::from_secs(30), || async {
            let (_, rows) = cp
                .get(&format!("/api/v1/results?agent={id}&check={check}"))
                .await
                .ok()?;
            rows.as_array()?.first().cloned()
        })
        .await
        .with_context(|| agent.log())?;
        assert_eq!(row["ok"], true, "{check}: {row}");
        let has_value =
            row["timings"].get(value).is_some() || row["result_values"].get(value).is_some();
        assert!(has_value, "{check}: no {value} in {row}");
    }
    Ok(())
}

crate::both_backends!(
    invalid_specifications_are_refused_by_field,
    invalid_specifications_are_refused_by_field
);

async fn invalid_specifications_are_refused_by_field(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    for (kind, field) in [
        (
            json!({"type": "http", "url": "https://x/", "assertions": [{"body_matches": "("}]}),
            "body_matches",
        ),
        (
            json!({"type": "tcp", "host": "h", "port": 1, "steps": [{"expect": "[z-a]"}]}),
            "expect",
        ),
        (
            json!({"type": "dns", "name": "example.com", "record_type": "BOGUS"}),
            "record_type",
        ),
        (
            json!({"type": "dns", "name": "example.com", "record_type": "A", "resolver": "nowhere"}),
            "resolver",
        ),
        (json!({"type": "icmp", "host": "h", "count": 0}), "count"),
        (json!({"type": "tls", "host": "h", "port": 0}), "port"),
        (
            json!({"type": "chain", "chain": "solana", "url": "ftp://rpc"}),
            "url",
        ),
        (json!({"type": "process"}), "name or pattern"),
        (
            json!({"type": "http", "url": "https://user:pw@x/"}),
            "credentials",
        ),
    ] {
        let (status, reply) = cp
            .post(
                "/api/v1/checks",
                json!({"name": "bad", "kind": kind, "regions": ["europe"]}),
            )
            .await?;
        assert_eq!(status, 422, "{kind}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{kind}: {message:?} does not name {field}"
        );
    }
    let (_, checks) = cp.get("/api/v1/checks").await?;
    assert_eq!(checks.as_array().map(Vec::len), Some(0));
    Ok(())
}
