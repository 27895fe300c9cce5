//! Enrollment refusals, TLS identity checks, the front door under idle sockets and garbage,
//! per-agent topic rules, and revocation.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use vantage_tests::{
    Agent, Backend, ControlPlane, MqttIdentity, TestStore, connect, expect_closed, wait_for,
};

crate::both_backends!(
    used_up_and_expired_tokens_are_refused,
    used_up_and_expired_tokens_are_refused
);

async fn used_up_and_expired_tokens_are_refused(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let token = cp.enrollment_token("us-east", 1).await?;
    let first = Agent::start(&cp, &token, "")?;
    first.wait_enrolled().await?;

    // The same token again: the agent binary exits with the control plane's reason.
    let second = Agent::start(&cp, &token, "")?;
    let log = wait_for(
        "the second agent to give up",
        Duration::from_secs(20),
        || async {
            let log = second.log();
            log.contains("error:").then_some(log)
        },
    )
    .await?;
    assert!(log.contains("enrollment token has no uses left"), "{log}");
    assert!(second.id().is_none());

    // An expired token.
    let (status, body) = cp
        .post(
            "/api/v1/enrollment-tokens",
            json!({"region": "us-east", "uses": 5, "ttl_s": 60}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let expired = body["token"].as_str().context("token")?.to_owned();
    let pool = cp.store_pool().await?;
    sqlx::query("UPDATE enrollment_tokens SET expires_at_ms = 1 WHERE id = $1")
        .bind(body["id"].as_str().context("id")?)
        .execute(&pool)
        .await?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&rcgen::KeyPair::generate()?)?
        .pem()?;
    let (status, body) = cp
        .request(
            reqwest::Method::POST,
            "/api/v1/enroll",
            None,
            Some(json!({"token": expired, "csr_pem": csr})),
        )
        .await?;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "enrollment token has expired");
    let (status, body) = cp
        .request(
            reqwest::Method::POST,
            "/api/v1/enroll",
            None,
            Some(json!({"token": "vet_nope", "csr_pem": csr})),
        )
        .await?;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "enrollment token is not known");
    // A bad CSR is refused before the token is spent.
    let good = cp.enrollment_token("us-east", 1).await?;
    let (status, _) = cp
        .request(
            reqwest::Method::POST,
            "/api/v1/enroll",
            None,
            Some(json!({"token": good, "csr_pem": "garbage"})),
        )
        .await?;
    assert_eq!(status, 422);
    let (status, _) = cp
        .request(
            reqwest::Method::POST,
            "/api/v1/enroll",
            None,
            Some(json!({"token": good, "csr_pem": csr})),
        )
        .await?;
    assert_eq!(status, 201, "the token still had its use");
    Ok(())
}

crate::both_backends!(
    wrong_ca_and_missing_certificate_are_refused,
    wrong_ca_and_missing_certificate_are_refused
);

async fn wrong_ca_and_missing_certificate_are_refused(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;

    // The real identity connects.
    let (_client, mut eventloop) =
        rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 16);
    connect(&mut eventloop).await?;

    // A certificate from another CA with the same CN is refused at the TLS handshake.
    let other_ca_key = rcgen::KeyPair::generate()?;
    let mut other_ca = rcgen::CertificateParams::default();
    other_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca_cert = other_ca.self_signed(&other_ca_key)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&other_ca_cert.pem(), other_ca_key)?;
    let forged_key = rcgen::KeyPair::generate()?;
    let mut forged = rcgen::CertificateParams::default();
    forged
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity.agent_id.clone());
    let forged_cert = forged.signed_by(&forged_key, &issuer)?;
    let tls = vantage_agent::tls::mutual_client(
        &cp.ca_pem,
        &forged_cert.pem(),
        &forged_key.serialize_pem(),
    )?;
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(
        vantage_tests::tls_options(&identity.agent_id, cp.mqtt_port, tls),
        16,
    );
    let error = connect(&mut eventloop).await.unwrap_err().to_string();
    println!("other-CA certificate: {error}");
    assert!(
        cp.counter("vantage_frontdoor_refused_total{reason=\"tls_handshake\"}")
            .await?
            >= 1
    );
    assert_eq!(
        cp.counter("vantage_frontdoor_logins_total").await?,
        1,
        "only the real identity logged in"
    );

    // No client certificate and no credential: refused with a clear CONNACK code.
    let tls = vantage_agent::tls::pinned_client(&cp.ca_pem)?;
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(
        vantage_tests::tls_options(&identity.agent_id, cp.mqtt_port, tls.clone()),
        16,
    );
    let error = connect(&mut eventloop).await.unwrap_err().to_string();
    assert!(error.contains("BadUserNamePassword"), "{error}");
    assert!(
        cp.counter("vantage_frontdoor_refused_total{reason=\"credentials\"}")
            .await?
            >= 1
    );

    // A valid certificate whose CN differs from the client id is refused.
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(identity.options("ag-someone-else")?, 16);
    let error = connect(&mut eventloop).await.unwrap_err().to_string();
    assert!(error.contains("BadClientId"), "{error}");
    Ok(())
}

crate::both_backends!(
    idle_sockets_do_not_delay_logins_and_garbage_is_cut,
    idle_sockets_do_not_delay_logins_and_garbage_is_cut
);

async fn idle_sockets_do_not_delay_logins_and_garbage_is_cut(
    backend: Backend,
) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "asia").await?;

    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", cp.mqtt_port)).await?);
    }
    let started = Instant::now();
    let (_client, mut eventloop) =
        rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 16);
    connect(&mut eventloop).await?;
    let login = started.elapsed();
    assert!(
        login < Duration::from_secs(3),
        "login took {login:?} with 200 idle sockets open (handshake timeout is 3 s)"
    );
    // The idle sockets are closed by the handshake timeout and counted.
    wait_for(
        "idle sockets timed out",
        Duration::from_secs(15),
        || async {
            let n = cp
                .counter("vantage_frontdoor_refused_total{reason=\"tls_timeout\"}")
                .await
                .ok()?;
            (n >= 200).then_some(())
        },
    )
    .await?;
    drop(idle);

    // Garbage after a good TLS handshake: disconnected and counted.
    let before = cp
        .counter("vantage_frontdoor_protocol_errors_total")
        .await?;
    let tls =
        vantage_agent::tls::mutual_client(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cp.mqtt_port)).await?;
    let mut stream = connector
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    stream
        .write_all(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        .await?;
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stream, &mut buffer),
    )
    .await
    .context("server kept the garbage connection open")?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected a close, got {read:?}"
    );
    wait_for("protocol error counted", Duration::from_secs(5), || async {
        (cp.counter("vantage_frontdoor_protocol_errors_total")
            .await
            .ok()?
            > before)
            .then_some(())
    })
    .await?;
    Ok(())
}

crate::both_backends!(
    agents_stay_inside_their_own_topics,
    agents_stay_inside_their_own_topics
);

async fn agents_stay_inside_their_own_topics(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let victim = MqttIdentity::enroll(&cp, "europe").await?;
    let attacker = MqttIdentity::enroll(&cp, "europe").await?;

    // Subscribing to another agent's config closes the connection.
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(attacker.options(&attacker.agent_id)?, 16);
    connect(&mut eventloop).await?;
    client
        .subscribe(
            format!("vantage/v1/agents/{}/config", victim.agent_id),
            rumqttc::QoS::AtLeastOnce,
        )
        .await?;
    expect_closed(&mut eventloop, Duration::from_secs(10)).await?;
    assert!(cp.counter("vantage_frontdoor_acl_violations_total").await? >= 1);

    // Publishing results under the victim's id closes the connection; nothing is stored.
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(attacker.options(&attacker.agent_id)?, 16);
    connect(&mut eventloop).await?;
    let forged = json!({"v": 1, "items": [{"seq": 1, "measured_at_ms": 1, "check_id": "web", "ok": false,
        "reason": "forged", "timings": {"total_ms": 1.0}}]});
    client
        .publish(
            format!("vantage/v1/agents/{}/results", victim.agent_id),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&forged)?,
        )
        .await?;
    expect_closed(&mut eventloop, Duration::from_secs(10)).await?;
    assert!(cp.counter("vantage_frontdoor_acl_violations_total").await? >= 2);
    // A wildcard subscription is refused too.
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(attacker.options(&attacker.agent_id)?, 16);
    connect(&mut eventloop).await?;
    client
        .subscribe("vantage/v1/#", rumqttc::QoS::AtMostOnce)
        .await?;
    expect_closed(&mut eventloop, Duration::from_secs(10)).await?;
    // A last will aimed at another agent's status is refused at CONNECT.
    let mut options = attacker.options(&attacker.agent_id)?;
    options.set_last_will(rumqttc::LastWill::new(
        format!("vantage/v1/agents/{}/status", victim.agent_id),
        r#"{"v":1,"state":"offline"}"#,
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    let error = connect(&mut eventloop).await.unwrap_err().to_string();
    assert!(error.contains("NotAuthorized"), "{error}");

    // A barrier: the victim's own result, published after the forgery, is ingested; ingest
    // is in order, so had the forgery got through it would be stored by now too.
    let (client, mut eventloop) = rumqttc::AsyncClient::new(victim.options(&victim.agent_id)?, 16);
    connect(&mut eventloop).await?;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let own = json!({"v": 1, "items": [{"seq": 7, "measured_at_ms": 2, "check_id": "web", "ok": true,
        "reason": "own", "timings": {"total_ms": 1.0}}]});
    client
        .publish(
            format!("vantage/v1/agents/{}/results", victim.agent_id),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&own)?,
        )
        .await?;
    let rows = wait_for(
        "the victim's own result",
        Duration::from_secs(10),
        || async {
            let (_, rows) = cp
                .get(&format!(
                    "/api/v1/results?agent={}&from_ms=0",
                    victim.agent_id
                ))
                .await
                .ok()?;
            (!rows.as_array()?.is_empty()).then_some(rows)
        },
    )
    .await?;
    let rows = rows.as_array().context("rows")?;
    assert_eq!(rows.len(), 1, "forged results were ingested: {rows:?}");
    assert_eq!(rows[0]["reason"], "own");
    Ok(())
}

crate::both_backends!(
    a_revoked_agent_is_disconnected_and_refused,
    a_revoked_agent_is_disconnected_and_refused
);

async fn a_revoked_agent_is_disconnected_and_refused(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "us-east").await?;
    let (_client, mut eventloop) =
        rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 16);
    connect(&mut eventloop).await?;
    let (status, _) = cp
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/agents/{}", identity.agent_id),
            Some(&cp.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 204);
    expect_closed(&mut eventloop, Duration::from_secs(5)).await?;
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 16);
    let error = connect(&mut eventloop).await.unwrap_err().to_string();
    assert!(error.contains("NotAuthorized"), "{error}");
    assert_eq!(cp.agent(&identity.agent_id).await?["revoked"], true);
    Ok(())
}

crate::both_backends!(
    the_cli_manages_tokens_and_revokes_live_agents,
    the_cli_manages_tokens_and_revokes_live_agents
);

async fn the_cli_manages_tokens_and_revokes_live_agents(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let (ok, out, err) = cp.cli(&["migrate"])?;
    assert!(ok, "{err}");
    assert!(out.contains("migrations applied"));

    // A token made by the CLI enrolls an agent through the running control plane.
    let (ok, token, err) = cp.cli(&[
        "token",
        "create",
        "--region",
        "us-west",
        "--labels",
        "tier=edge",
        "--uses",
        "2",
        "--ttl",
        "1h",
    ])?;
    assert!(ok, "{err}");
    let agent = Agent::start(&cp, token.trim(), "")?;
    let id = agent.wait_enrolled().await?;
    let view = cp.agent(&id).await?;
    assert_eq!(view["region"], "us-west");
    assert_eq!(view["labels"]["tier"], "edge");
    let (ok, listing, _) = cp.cli(&["token", "list"])?;
    assert!(
        ok && listing.contains("us-west") && listing.contains("uses_left=1"),
        "{listing}"
    );
    assert!(!listing.contains(token.trim()), "the CLI listed a secret");

    // Bad input is refused with a clear message and creates nothing.
    let (ok, _, err) = cp.cli(&["token", "create", "--region", "us-west", "--ttl", "3w"])?;
    assert!(!ok && err.contains("unknown unit"), "{err}");
    let (ok, _, err) = cp.cli(&["token", "create", "--region", "Bad Region"])?;
    assert!(!ok && err.contains("region"), "{err}");
    let (ok, _, err) = cp.cli(&["api-token", "create", "--role", "root"])?;
    assert!(!ok && err.contains("role"), "{err}");

    // Revoking from the CLI reaches the running control plane: the agent goes offline.
    cp.wait_agent_state(&id, "online", Duration::from_secs(20))
        .await?;
    let (ok, out, err) = cp.cli(&["agent", "revoke", &id])?;
    assert!(ok, "{err}");
    assert!(out.contains("revoked"));
    wait_for(
        "the revoked agent disconnected",
        Duration::from_secs(10),
        || async { agent.log().contains("Disconnected").then_some(()) },
    )
    .await?;
    let (ok, _, err) = cp.cli(&["agent", "revoke", &id])?;
    assert!(!ok && err.contains("already revoked"), "{err}");
    let (ok, listing, _) = cp.cli(&["agent", "list"])?;
    assert!(
        ok && listing.contains(&id) && listing.contains("revoked"),
        "{listing}"
    );
    Ok(())
}

crate::both_backends!(
    one_address_cannot_hold_every_handshake_slot,
    one_address_cannot_hold_every_handshake_slot
);

async fn one_address_cannot_hold_every_handshake_slot(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start_with(
        &store,
        &[("VANTAGE_MAX_PENDING_HANDSHAKES_PER_ADDRESS", "5")],
    )
    .await?;
    let identity = MqttIdentity::enroll(&cp, "asia").await?;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", cp.mqtt_port)).await?);
    }
    // The sixth connection from the same address is closed at once and counted.
    let mut sixth = tokio::net::TcpStream::connect(("127.0.0.1", cp.mqtt_port)).await?;
    let mut buffer = [0u8; 8];
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut sixth, &mut buffer),
    )
    .await
    .context("the sixth connection was not closed")?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        cp.counter("vantage_frontdoor_refused_total{reason=\"address_limit\"}")
            .await?
            >= 1
    );
    // Once the idle ones are gone, logins work again.
    drop(idle);
    wait_for(
        "a login after the idle sockets closed",
        Duration::from_secs(10),
        || async {
            let (_c, mut eventloop) =
                rumqttc::AsyncClient::new(identity.options(&identity.agent_id).ok()?, 16);
            connect(&mut eventloop).await.ok()
        },
    )
    .await?;
    Ok(())
}
