//! Writes that must not happen: an enrollment that fails spends no token use, and a config
//! that did not change is neither stored again nor republished to its agent.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore};

crate::both_backends!(
    a_failed_enrollment_spends_no_token_use,
    a_failed_enrollment_spends_no_token_use
);

async fn enroll_with(cp: &ControlPlane, token: &str) -> anyhow::Result<(u16, Value)> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    cp.request(
        reqwest::Method::POST,
        "/api/v1/enroll",
        None,
        Some(json!({ "token": token, "csr_pem": csr, "hostname": "n1" })),
    )
    .await
}

/// The store refuses the new agent's row (a trigger injects the fault): the enrollment fails
/// with 500 and the token keeps its use, so the same token enrolls once the fault is gone.
async fn a_failed_enrollment_spends_no_token_use(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let token = cp.enrollment_token("europe", 1).await?;
    cp.inject_insert_fault("agents").await?;
    let (status, reply) = enroll_with(&cp, &token).await?;
    assert_eq!(status, 500, "{reply}");
    let (_, tokens) = cp.get("/api/v1/enrollment-tokens").await?;
    let uses_left = tokens
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t["uses_left"].as_i64())
        .with_context(|| format!("{tokens}"))?;
    assert_eq!(uses_left, 1, "the failed enrollment spent the token");
    let (_, agents) = cp.get("/api/v1/agents").await?;
    assert_eq!(agents.as_array().map(Vec::len), Some(0));

    cp.clear_insert_fault("agents").await?;
    let (status, reply) = enroll_with(&cp, &token).await?;
    assert_eq!(status, 201, "{reply}");
    let (status, _) = enroll_with(&cp, &token).await?;
    assert_eq!(status, 401, "a one-use token enrolled twice");
    Ok(())
}

crate::both_backends!(
    unchanged_configs_are_not_republished,
    unchanged_configs_are_not_republished
);

/// An agent gets a config when its checks change, and only then: changes to a check of a
/// region it is not in, and status messages that change nothing, publish nothing to it.
async fn unchanged_configs_are_not_republished(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;
    let agent = identity.agent_id.clone();
    let (client, mut configs) = identity.listen("config").await?;
    let online = serde_json::to_vec(&json!({"v": 1, "state": "online"}))?;
    let status_topic = format!("vantage/v1/agents/{agent}/status");
    client
        .publish(
            &status_topic,
            rumqttc::QoS::AtLeastOnce,
            true,
            online.clone(),
        )
        .await?;
    cp.wait_agent_state(&agent, "online", Duration::from_secs(10))
        .await?;
    let check = |id: &str, region: &str, interval_s: u32| {
        json!({"id": id, "name": id, "interval_s": interval_s, "timeout_ms": 1000,
            "regions": [region], "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9}})
    };
    let (status, reply) = cp
        .post("/api/v1/checks", check("mine", "europe", 30))
        .await?;
    anyhow::ensure!(status == 201, "{status} {reply}");
    // The agent may first get an empty config (it came online before the check existed).
    let first = loop {
        let config = tokio::time::timeout(Duration::from_secs(10), configs.recv())
            .await
            .context("no config with the agent's check")?
            .context("config stream ended")?;
        if config["checks"].as_array().map(Vec::len) == Some(1) {
            break config["revision"].as_i64().context("revision")?;
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, view) = cp.get(&format!("/api/v1/agents/{agent}")).await?;
    assert_eq!(view["config_revision"].as_i64(), Some(first));

    let (status, reply) = cp
        .post("/api/v1/checks", check("theirs", "asia", 30))
        .await?;
    anyhow::ensure!(status == 201, "{status} {reply}");
    for i in 0..20u32 {
        let (status, reply) = cp
            .put("/api/v1/checks/theirs", check("theirs", "asia", 30 + i))
            .await?;
        anyhow::ensure!(status == 200, "{status} {reply}");
        client
            .publish(
                &status_topic,
                rumqttc::QoS::AtLeastOnce,
                true,
                online.clone(),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut unexpected = Vec::new();
    while let Ok(config) = configs.try_recv() {
        unexpected.push(config["revision"].clone());
    }
    assert!(
        unexpected.is_empty(),
        "unchanged config republished: revisions {unexpected:?}"
    );
    let (_, view) = cp.get(&format!("/api/v1/agents/{agent}")).await?;
    assert_eq!(view["config_revision"].as_i64(), Some(first));

    // A change that concerns it arrives, once, with the next revision.
    let (status, reply) = cp
        .put("/api/v1/checks/mine", check("mine", "europe", 60))
        .await?;
    anyhow::ensure!(status == 200, "{status} {reply}");
    let config = tokio::time::timeout(Duration::from_secs(10), configs.recv())
        .await
        .context("no config after a change that concerns the agent")?
        .context("config stream ended")?;
    assert_eq!(config["revision"].as_i64(), Some(first + 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        configs.try_recv().is_err(),
        "the change was published twice"
    );
    Ok(())
}

crate::both_backends!(
    a_hello_the_store_refuses_is_not_announced,
    a_hello_the_store_refuses_is_not_announced
);

/// The live feed shows only committed data, hellos included: a hello the store refuses (a
/// trigger injects the fault) is not announced; the next one, stored, is.
async fn a_hello_the_store_refuses_is_not_announced(backend: Backend) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;
    let agent = identity.agent_id.clone();
    let mut socket = cp.live_socket(&format!("kind=hello&agent={agent}")).await?;
    let pool = cp.store_pool().await?;
    let create = match backend {
        Backend::Sqlite => vec![
            "CREATE TRIGGER refuse_hello BEFORE UPDATE ON agents WHEN NEW.boot_id = 'refused' BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
        ],
        Backend::Postgres => vec![
            "CREATE FUNCTION refuse_hello() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.boot_id = 'refused' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_hello BEFORE UPDATE ON agents FOR EACH ROW EXECUTE FUNCTION refuse_hello()",
        ],
    };
    for sql in create {
        sqlx::query(sql).execute(&pool).await?;
    }
    let (client, _acks) = identity.listen("results/ack").await?;
    let hello = |boot_id: &str| {
        serde_json::to_vec(
            &json!({"v": 1, "version": "t", "arch": "x86_64", "os": "linux",
            "hostname": "n1", "labels": {}, "capabilities": [], "boot_id": boot_id,
            "next_seq": 1, "config_revision": 0}),
        )
    };
    let topic = format!("vantage/v1/agents/{agent}/hello");
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, hello("refused")?)
        .await?;
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, hello("stored")?)
        .await?;
    let live: Value = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str::<Value>(&text).map_err(anyhow::Error::from);
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("live socket ended: {other:?}"),
            }
        }
    })
    .await
    .context("no live hello within 10 s")??;
    assert_eq!(
        live["data"]["boot_id"], "stored",
        "a hello the store refused was announced: {live}"
    );
    let (_, view) = cp.get(&format!("/api/v1/agents/{agent}")).await?;
    assert_eq!(view["boot_id"], "stored");
    Ok(())
}
