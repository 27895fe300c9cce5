//! Client certificate renewal over MQTT: a real agent with 60-second certificates renews twice
//! and never shows offline while results keep arriving; CSRs for another agent or naming
//! another identity are refused and counted, and a good one is answered on `cmd`.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use rumqttc::{AsyncClient, Event, Incoming, QoS};
use serde_json::{Value, json};
use sqlx::Row;
use vantage_tests::{
    Agent, Backend, ControlPlane, MqttIdentity, TestStore, connect, expect_closed, wait_for,
};

/// The serial of agent `id`'s newest certificate, from the store.
async fn stored_serial(cp: &ControlPlane, id: &str) -> anyhow::Result<String> {
    let pool = cp.store_pool().await?;
    let row = sqlx::query("SELECT cert_serial FROM agents WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    let serial: String = row.try_get(0)?;
    pool.close().await;
    Ok(serial)
}

/// `notAfter` (Unix ms) of the certificate in a PEM file.
fn pem_not_after_ms(path: &std::path::Path) -> anyhow::Result<i64> {
    let pem = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(vantage_agent::renew::CertFacts::of_pem(&pem)?.not_after_ms)
}

crate::both_backends!(
    agent_renews_twice_without_going_offline,
    agent_renews_twice_without_going_offline
);

async fn agent_renews_twice_without_going_offline(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start_with(&store, &[("VANTAGE_CERT_VALIDITY_S", "60")]).await?;
    // A TCP target, checked every second, so results flow the whole time.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = target.local_addr()?.port();
    tokio::spawn(async move { while target.accept().await.is_ok() {} });
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "tcp-up", "name": "tcp-up", "interval_s": 1, "timeout_ms": 900,
                   "kind": {"type": "tcp", "host": "127.0.0.1", "port": port},
                   "regions": ["europe"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");

    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    let first = cp
        .wait_agent_state(&id, "online", Duration::from_secs(20))
        .await
        .with_context(|| agent.log())?;
    let mut live = cp.live_socket(&format!("kind=status&agent={id}")).await?;
    let statuses = tokio::spawn(async move {
        let mut states = Vec::new();
        while let Some(Ok(message)) = live.next().await {
            if let Ok(text) = message.to_text()
                && let Ok(event) = serde_json::from_str::<Value>(text)
            {
                states.push(event["data"]["state"].as_str().unwrap_or("?").to_owned());
            }
        }
        states
    });

    // The certificate's expiry as the API shows it: the one enrollment issued, then two
    // renewals. Polled every 200 ms; the agent must never be anything but online.
    let mut expiries = vec![first["cert_not_after_ms"].as_i64().context("expiry")?];
    let mut serials = vec![stored_serial(&cp, &id).await?];
    let validity_ms = expiries[0] - first["enrolled_at_ms"].as_i64().context("enrolled")?;
    assert!(
        (59_000..=61_000).contains(&validity_ms),
        "a 60 s certificate, got {validity_ms} ms"
    );
    let started = Instant::now();
    let mut renewed_at_ms = 0;
    let mut n_polls = 0;
    while expiries.len() < 3 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(150),
            "{} renewals in 150 s: {expiries:?}\n{}",
            expiries.len() - 1,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let view = cp.agent(&id).await?;
        n_polls += 1;
        assert_eq!(
            view["state"],
            "online",
            "the agent went {} during renewal\n{}",
            view["state"],
            agent.log()
        );
        let expiry = view["cert_not_after_ms"].as_i64().context("expiry")?;
        if expiry != *expiries.last().context("expiries")? {
            assert!(expiry > *expiries.last().context("expiries")?);
            expiries.push(expiry);
            serials.push(stored_serial(&cp, &id).await?);
            renewed_at_ms = vantage_agent::now_ms();
        }
    }
    assert!(n_polls > 100, "polled the state {n_polls} times");
    // Renewed at two thirds of the lifetime, not at once: about 40 s apart.
    let gap_ms = expiries[2] - expiries[1];
    assert!(
        (30_000..=50_000).contains(&gap_ms),
        "renewals {gap_ms} ms apart: {expiries:?}"
    );
    assert!(
        serials[0] != serials[1] && serials[1] != serials[2] && serials[0] != serials[2],
        "{serials:?}"
    );

    // The agent connects with the second renewed certificate and kept it on disk, with no
    // staged file left; it stayed online and results kept coming after the renewal.
    let state_dir = agent.state_dir();
    wait_for(
        "the agent to promote its second renewed certificate",
        Duration::from_secs(15),
        || async {
            (pem_not_after_ms(&state_dir.join("agent.pem")).ok() == Some(expiries[2])).then_some(())
        },
    )
    .await
    .with_context(|| agent.log())?;
    assert!(!state_dir.join("agent.pem.next").exists());
    assert!(!state_dir.join("agent.key.next").exists());
    assert_eq!(
        agent
            .log()
            .matches("Connected with the renewed certificate")
            .count(),
        2,
        "{}",
        agent.log()
    );
    wait_for(
        "a result measured after the second renewal",
        Duration::from_secs(15),
        || async {
            let (_, results) = cp.get("/api/v1/results?check=tcp-up").await.ok()?;
            results
                .as_array()?
                .iter()
                .any(|r| r["measured_at_ms"].as_i64() > Some(renewed_at_ms) && r["ok"] == true)
                .then_some(())
        },
    )
    .await?;
    assert_eq!(cp.agent(&id).await?["state"], "online");

    // Counted, and the soonest expiry is the renewed certificate's.
    assert_eq!(cp.counter("vantage_cert_renewals_issued_total").await?, 2);
    let metrics = cp.prometheus().await?;
    assert!(
        metrics.contains(&format!(
            "vantage_agent_cert_soonest_expiry_timestamp_seconds {}\n",
            expiries[2] / 1000
        )),
        "{metrics}"
    );
    // The live feed never said offline either; it saw the agent come online again with each
    // new certificate (a clean reconnect, no last will).
    drop(cp);
    let states = tokio::time::timeout(Duration::from_secs(10), statuses).await??;
    assert!(states.len() >= 2, "{states:?}");
    assert!(states.iter().all(|s| s == "online"), "{states:?}");
    Ok(())
}

/// A CSR for `key` with `cn` as its subject (no CN when `None`) and `sans`.
fn csr(key: &rcgen::KeyPair, cn: Option<&str>, sans: &[&str]) -> anyhow::Result<String> {
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    let mut name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        name.push(rcgen::DnType::CommonName, cn);
    }
    params.distinguished_name = name;
    Ok(params.serialize_request(key)?.pem()?)
}

fn csr_message(request_id: &str, csr_pem: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"v": 1, "request_id": request_id, "csr_pem": csr_pem}))
        .unwrap_or_default()
}

crate::both_backends!(
    foreign_and_wrong_name_csrs_are_refused,
    foreign_and_wrong_name_csrs_are_refused
);

async fn foreign_and_wrong_name_csrs_are_refused(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let victim = MqttIdentity::enroll(&cp, "europe").await?;
    let attacker = MqttIdentity::enroll(&cp, "europe").await?;
    let victim_expiry = cp.agent(&victim.agent_id).await?["cert_not_after_ms"].clone();
    let victim_serial = stored_serial(&cp, &victim.agent_id).await?;
    let attacker_serial = stored_serial(&cp, &attacker.agent_id).await?;
    let key = rcgen::KeyPair::generate()?;

    // A CSR on another agent's topic: the front door closes the connection.
    let violations = cp.counter("vantage_frontdoor_acl_violations_total").await?;
    let (client, mut eventloop) = AsyncClient::new(attacker.options(&attacker.agent_id)?, 16);
    connect(&mut eventloop).await?;
    client
        .publish(
            format!("vantage/v1/agents/{}/csr", victim.agent_id),
            QoS::AtLeastOnce,
            false,
            csr_message("r-foreign", &csr(&key, Some(&victim.agent_id), &[])?),
        )
        .await?;
    expect_closed(&mut eventloop, Duration::from_secs(10)).await?;
    assert_eq!(
        cp.counter("vantage_frontdoor_acl_violations_total").await?,
        violations + 1
    );

    // On its own topic: CSRs naming the other agent, an extra name, or nothing valid are
    // refused and counted by reason; then a good one is answered, first on cmd.
    let (client, mut eventloop) = AsyncClient::new(attacker.options(&attacker.agent_id)?, 64);
    connect(&mut eventloop).await?;
    client
        .subscribe(
            format!("vantage/v1/agents/{}/cmd", attacker.agent_id),
            QoS::AtLeastOnce,
        )
        .await?;
    let own_topic = format!("vantage/v1/agents/{}/csr", attacker.agent_id);
    let bad = [
        ("r-other-cn", csr(&key, Some(&victim.agent_id), &[])?),
        (
            "r-extra-san",
            csr(&key, Some(&attacker.agent_id), &["victim.example"])?,
        ),
        ("r-no-cn", csr(&key, None, &[])?),
        (
            "r-garbage",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n".to_owned(),
        ),
    ];
    for (request_id, pem) in &bad {
        client
            .publish(
                &own_topic,
                QoS::AtLeastOnce,
                false,
                csr_message(request_id, pem),
            )
            .await?;
    }
    client
        .publish(
            &own_topic,
            QoS::AtLeastOnce,
            false,
            br#"{"v":1,"request_id":"r-x","csr_pem":"x","cn":"ag-other"}"#.to_vec(),
        )
        .await?;
    client
        .publish(
            &own_topic,
            QoS::AtLeastOnce,
            false,
            csr_message("r-good", &csr(&key, Some(&attacker.agent_id), &[])?),
        )
        .await?;
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    return serde_json::from_slice::<Value>(&publish.payload)
                        .map_err(anyhow::Error::from);
                }
                Ok(_) => {}
                Err(error) => anyhow::bail!("connection closed: {error}"),
            }
        }
    })
    .await
    .context("no answer on cmd within 15 s")??;
    assert_eq!(answer["request_id"], "r-good", "{answer}");
    assert_eq!(answer["command"]["cmd"], "renewed_certificate", "{answer}");
    assert_eq!(
        cp.counter("vantage_cert_renewals_refused_total{reason=\"identity\"}")
            .await?,
        3
    );
    assert_eq!(
        cp.counter("vantage_cert_renewals_refused_total{reason=\"bad_csr\"}")
            .await?,
        1
    );
    assert_eq!(
        cp.counter("vantage_ingest_rejected_total{reason=\"malformed\"}")
            .await?,
        1
    );
    assert_eq!(cp.counter("vantage_cert_renewals_issued_total").await?, 1);

    // The same request again at once: a certificate was just issued, so it is dropped
    // before signing and counted; no second certificate is issued.
    client
        .publish(
            &own_topic,
            QoS::AtLeastOnce,
            false,
            csr_message("r-again", &csr(&key, Some(&attacker.agent_id), &[])?),
        )
        .await?;
    // The event loop must run for the publish to go out.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cp
        .counter("vantage_cert_renewals_refused_total{reason=\"throttled\"}")
        .await?
        < 1
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the repeat was not throttled within 10 s"
        );
        match tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                anyhow::bail!(
                    "a second answer: {}",
                    String::from_utf8_lossy(&publish.payload)
                )
            }
            Ok(Err(error)) => anyhow::bail!("connection closed: {error}"),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    assert_eq!(cp.counter("vantage_cert_renewals_issued_total").await?, 1);

    // The answer is a certificate for the new key and the attacker's own id, as recorded.
    let cert_pem = answer["command"]["cert_pem"].as_str().context("cert_pem")?;
    let facts = vantage_agent::renew::check_certificate(
        cert_pem,
        &key,
        &attacker.agent_id,
        &attacker.ca_pem,
        vantage_agent::now_ms(),
    )?;
    assert_eq!(
        Some(facts.not_after_ms),
        answer["command"]["not_after_ms"].as_i64()
    );
    assert_eq!(
        cp.agent(&attacker.agent_id).await?["cert_not_after_ms"].as_i64(),
        Some(facts.not_after_ms)
    );
    assert_ne!(
        stored_serial(&cp, &attacker.agent_id).await?,
        attacker_serial
    );
    // It logs in.
    let renewed = MqttIdentity {
        agent_id: attacker.agent_id.clone(),
        cert_pem: cert_pem.to_owned(),
        key_pem: key.serialize_pem(),
        ca_pem: attacker.ca_pem.clone(),
        mqtt_port: cp.mqtt_port,
    };
    drop(client);
    let (_client, mut eventloop) = AsyncClient::new(renewed.options(&renewed.agent_id)?, 16);
    connect(&mut eventloop).await?;

    // The victim's certificate is untouched.
    assert_eq!(
        cp.agent(&victim.agent_id).await?["cert_not_after_ms"],
        victim_expiry
    );
    assert_eq!(stored_serial(&cp, &victim.agent_id).await?, victim_serial);
    Ok(())
}
