//! The spine end to end: enroll → connect → hello → metrics and results stored → visible in
//! the API, on the live WebSocket and SSE feeds, and on the retained MQTT status topics.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, wait_for};

crate::both_backends!(
    enroll_report_store_and_stream,
    enroll_report_store_and_stream
);

async fn enroll_report_store_and_stream(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start_with(&store, &[("VANTAGE_METRICS_INTERVAL_S", "1")]).await?;

    // A real HTTP target and a TCP target for the checks.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_port = target.local_addr()?.port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = target.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 2048];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "web", "name": "web", "interval_s": 1, "timeout_ms": 900,
                   "kind": {"type": "http", "url": format!("http://127.0.0.1:{target_port}/")},
                   "regions": ["europe"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "create check: {status} {body}");

    // Subscribe to the live feed before the agent exists: everything must arrive after commit.
    let mut socket = cp.live_socket("kind=result&check=web").await?;

    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(
        &cp,
        &token,
        "metrics_interval_s = 1\n[labels]\nrole = \"edge\"",
    )?;
    let id = agent.wait_enrolled().await?;

    let online = wait_for("agent online", Duration::from_secs(20), || async {
        let agent = cp.agent(&id).await.ok()?;
        (agent["state"] == "online" && agent["boot_id"] != "").then_some(agent)
    })
    .await
    .with_context(|| agent.log())?;
    assert_eq!(online["region"], "europe");
    assert_eq!(online["labels"]["role"], "edge");
    assert_eq!(online["arch"], std::env::consts::ARCH);

    // The live WebSocket delivers a committed result of the check.
    let live: Value = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text),
                Some(Ok(_)) => {}
                other => panic!("live socket ended: {other:?}"),
            }
        }
    })
    .await
    .context("no live result within 20 s")??;
    assert_eq!(live["kind"], "result");
    assert_eq!(live["agent_id"], id.as_str());
    assert_eq!(live["region"], "europe");
    assert_eq!(live["data"]["check_id"], "web");
    assert_eq!(live["data"]["ok"], true);

    // Results and metrics are stored and visible through the API.
    let results = wait_for("stored results", Duration::from_secs(20), || async {
        let (_, body) = cp
            .get(&format!("/api/v1/results?agent={id}&check=web"))
            .await
            .ok()?;
        (body.as_array()?.len() >= 2).then_some(body)
    })
    .await?;
    let first = &results[0];
    assert_eq!(first["ok"], true);
    assert_eq!(first["status_code"], 200);
    assert_eq!(first["region"], "europe");
    // The live event was published only after its row was committed.
    let live_seq = live["data"]["seq"].as_i64().context("seq")?;
    let (_, by_seq) = cp
        .get(&format!("/api/v1/results?agent={id}&limit=1000"))
        .await?;
    assert!(
        by_seq
            .as_array()
            .context("array")?
            .iter()
            .any(|r| r["seq"] == live_seq)
    );

    let metrics = wait_for("stored metrics", Duration::from_secs(20), || async {
        let (_, body) = cp.get(&format!("/api/v1/metrics?agent={id}")).await.ok()?;
        (body.as_array()?.len() >= 2).then_some(body)
    })
    .await?;
    let sample = &metrics[0];
    assert!(sample["mem_total_bytes"].as_i64().unwrap_or(0) > 0);
    assert!(sample["uptime_s"].as_i64().unwrap_or(0) > 0);
    let detail = &sample["detail"];
    assert!(detail["nets"].as_array().is_some_and(|n| !n.is_empty()));

    // Region filter and time range narrow the query.
    let (_, none) = cp
        .get(&format!("/api/v1/results?agent={id}&region=asia"))
        .await?;
    assert_eq!(none.as_array().map(Vec::len), Some(0));
    let (_, old) = cp
        .get(&format!("/api/v1/results?agent={id}&from_ms=0&to_ms=1000"))
        .await?;
    assert_eq!(old.as_array().map(Vec::len), Some(0));

    // SSE carries the same feed.
    let response = cp
        .client
        .get(cp.url(&format!("/api/v1/live?kind=metrics&agent={id}")))
        .bearer_auth(&cp.admin_token)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Some(Ok(bytes)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&bytes));
            if text.contains("\n\n") {
                break;
            }
        }
        text
    })
    .await?;
    assert!(chunk.contains("event: metrics"), "{chunk}");
    assert!(chunk.contains(&id), "{chunk}");

    // A check added while the agent runs reaches it as a new config revision, no restart.
    let revision = cp.agent(&id).await?["config_revision"]
        .as_i64()
        .unwrap_or(0);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_port = tcp.local_addr()?.port();
    tokio::spawn(async move { while tcp.accept().await.is_ok() {} });
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "ssh-like", "name": "tcp", "interval_s": 1, "timeout_ms": 500,
                   "kind": {"type": "tcp", "host": "127.0.0.1", "port": tcp_port}, "regions": ["europe", "asia"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "create check: {status} {body}");
    wait_for(
        "results of the new check",
        Duration::from_secs(20),
        || async {
            let (_, rows) = cp
                .get(&format!("/api/v1/results?agent={id}&check=ssh-like"))
                .await
                .ok()?;
            let first = rows.as_array()?.first()?.clone();
            (first["ok"] == true).then_some(())
        },
    )
    .await
    .with_context(|| agent.log())?;
    assert!(
        cp.agent(&id).await?["config_revision"]
            .as_i64()
            .unwrap_or(0)
            > revision
    );
    assert!(agent.log().contains("Applying desired config"));

    // The desired config was applied and acknowledged revision is visible.
    let agent_view = cp.agent(&id).await?;
    assert!(agent_view["config_revision"].as_i64().unwrap_or(0) >= 1);
    assert!(agent_view["last_seq"].as_i64().unwrap_or(0) >= 4);
    Ok(())
}

crate::both_backends!(
    retained_status_topics_for_viewers,
    retained_status_topics_for_viewers
);

/// A viewer (no client certificate, an API token as password) reads the retained status
/// topics with a standard MQTT client, also right after a control-plane restart (they are
/// rebuilt from the store); it may not read agent topics.
async fn retained_status_topics_for_viewers(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    // A long interval: after the first result the next one is a minute away, so what a viewer
    // reads right after the restart can only come from the store.
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "slow-tcp", "name": "tcp", "interval_s": 60, "timeout_ms": 1000,
                   "kind": {"type": "tcp", "host": "127.0.0.1", "port": port}, "regions": ["asia"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let token = cp.enrollment_token("asia", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    let first = wait_for("the first result", Duration::from_secs(90), || async {
        let (_, rows) = cp.get(&format!("/api/v1/results?agent={id}")).await.ok()?;
        rows.as_array()?.first().cloned()
    })
    .await?;
    let (status, viewer) = cp
        .post(
            "/api/v1/api-tokens",
            json!({"role": "viewer", "name": "dash"}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {viewer}");
    let viewer_token = viewer["token"].as_str().context("token")?.to_owned();

    cp.kill();
    cp.spawn().await?;

    let tls = vantage_agent::tls::pinned_client(&cp.ca_pem)?;
    let mut options = vantage_tests::tls_options("dashboard", cp.mqtt_port, tls);
    options.set_credentials("viewer", viewer_token);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    vantage_tests::connect(&mut eventloop).await?;
    client
        .subscribe(
            "vantage/v1/status/checks/slow-tcp/asia",
            rumqttc::QoS::AtLeastOnce,
        )
        .await?;
    client
        .subscribe(
            format!("vantage/v1/status/nodes/{id}"),
            rumqttc::QoS::AtLeastOnce,
        )
        .await?;
    let mut check_view = None;
    let mut node_view = None;
    tokio::time::timeout(Duration::from_secs(10), async {
        while check_view.is_none() || node_view.is_none() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) =
                eventloop.poll().await
            {
                let value: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if p.topic.contains("/status/checks/") {
                    assert!(
                        p.retain,
                        "a new subscriber gets the retained status at once"
                    );
                    check_view = Some(value);
                } else {
                    node_view = Some(value);
                }
            }
        }
    })
    .await
    .context("retained status topics did not arrive")?;
    let check_view = check_view.context("check status")?;
    assert_eq!(check_view["check_id"], "slow-tcp");
    assert_eq!(check_view["region"], "asia");
    assert_eq!(check_view["ok"], true);
    assert_eq!(check_view["measured_at_ms"], first["measured_at_ms"]);
    let node_view = node_view.context("node status")?;
    assert_eq!(node_view["region"], "asia");
    assert!(node_view["state"] == "online" || node_view["state"] == "offline");

    // Reading an agent's config is refused: the connection is closed.
    client
        .subscribe(
            format!("vantage/v1/agents/{id}/config"),
            rumqttc::QoS::AtLeastOnce,
        )
        .await?;
    vantage_tests::expect_closed(&mut eventloop, Duration::from_secs(10)).await?;
    assert!(cp.counter("vantage_frontdoor_acl_violations_total").await? >= 1);
    Ok(())
}
