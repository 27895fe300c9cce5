//! Hostile payloads on an agent's own topics and broken MQTT at the front door: dropped
//! (whole messages, single rows of a valid batch, or the connection), counted, nothing stored
//! changes, the control plane stays up, keeps ingesting, and its memory stays flat.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore, connect, wait_for};

crate::both_backends!(
    malformed_oversize_and_wrong_version_payloads_are_dropped,
    malformed_oversize_and_wrong_version_payloads_are_dropped
);

async fn malformed_oversize_and_wrong_version_payloads_are_dropped(
    backend: Backend,
) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 64);
    connect(&mut eventloop).await?;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let results = format!("vantage/v1/agents/{}/results", identity.agent_id);
    let metrics = format!("vantage/v1/agents/{}/metrics", identity.agent_id);
    let hello = format!("vantage/v1/agents/{}/hello", identity.agent_id);

    // One good row first, so there is stored data that must stay untouched.
    let good = |seq: u64| {
        json!({"v": 1, "items": [{"seq": seq, "measured_at_ms": 1_700_000_000_000_i64 + seq as i64,
            "check_id": "web", "ok": true, "reason": "status 200", "timings": {"total_ms": 1.5}}]})
    };
    // Publishes good row `seq` and waits until `seq` rows are stored.
    let store_good = |seq: u64| {
        let (client, cp, results, agent) = (&client, &cp, &results, &identity.agent_id);
        async move {
            client
                .publish(
                    results,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&good(seq))?,
                )
                .await?;
            wait_for("the good row", Duration::from_secs(10), || async {
                let (_, rows) = cp
                    .get(&format!("/api/v1/results?agent={agent}&from_ms=0"))
                    .await
                    .ok()?;
                (rows.as_array()?.len() as u64 == seq).then_some(rows)
            })
            .await
        }
    };
    let stored = store_good(1).await?;

    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (&results, b"{not json".to_vec()),
        (&results, b"".to_vec()),
        (&results, vec![0xff, 0xfe, 0x00]),
        (&results, br#"{"v":1,"items":[{"seq":"two"}]}"#.to_vec()),
        (&results, br#"{"v":1,"items":[],"extra":true}"#.to_vec()),
        (&results, br#"{"v":1,"items":[{"seq":3,"measured_at_ms":1,"check_id":"../../etc","ok":true,"reason":"","timings":{"total_ms":1}}]}"#.to_vec()),
        (&metrics, br#"{"v":1,"items":[{"seq":4}]}"#.to_vec()),
        (&hello, br#"{"v":1}"#.to_vec()),
        (&results, serde_json::to_vec(&json!({"v": 2, "items": []}))?),
        (&results, br#"{"items":[]}"#.to_vec()),
        (&results, vec![b' '; 300 * 1024]),
    ];
    let n_hostile = hostile.len() as u64;
    for (topic, payload) in hostile {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await?;
    }
    let line = |reason: &str| format!("vantage_ingest_rejected_total{{reason=\"{reason}\"}}");
    let row = |reason: &str| format!("vantage_ingest_rows_refused_total{{reason=\"{reason}\"}}");
    let counted =
        wait_for(
            "every hostile payload counted",
            Duration::from_secs(10),
            || async {
                let malformed = cp.counter(&line("malformed")).await.ok()?;
                let version = cp.counter(&line("version")).await.ok()?;
                let oversize = cp.counter(&line("oversize")).await.ok()?;
                let undecodable = cp.counter(&row("undecodable")).await.ok()?;
                let invalid_id = cp.counter(&row("invalid_id")).await.ok()?;
                (malformed + version + oversize + undecodable + invalid_id == n_hostile)
                    .then_some((malformed, version, oversize, undecodable, invalid_id))
            },
        )
        .await?;
    // Whole messages are refused when their envelope is (not JSON, wrong version, too big,
    // unknown envelope field, bad hello); rows inside a valid batch are refused one by one.
    assert_eq!(
        counted,
        (5, 2, 1, 2, 1),
        "(malformed, version, oversize, undecodable rows, invalid-id rows)"
    );

    // Still alive, still ingesting, and the stored row is exactly as before.
    let rows = store_good(2).await?;
    assert_eq!(rows[1], stored[0], "the stored row changed");
    assert!(cp.is_running());
    let (status, _) = cp.get("/healthz").await?;
    assert_eq!(status, 200);
    Ok(())
}

crate::both_backends!(
    malformed_mqtt_at_rate_is_dropped_and_counted_with_memory_flat,
    malformed_mqtt_at_rate_is_dropped_and_counted_with_memory_flat
);

/// What one hostile connection sends to the front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// Bytes that are no MQTT packet, instead of a CONNECT.
    Garbage,
    /// A CONNECT, then a PUBLISH whose header claims 256 MiB.
    OversizePacket,
    /// A CONNECT, then a packet of the reserved type 0.
    ReservedType,
    /// A CONNECT, then a PUBLISH whose topic is not UTF-8.
    TopicNotUtf8,
    /// No client certificate and a password that is no API token.
    BadToken,
}

impl Hostile {
    const ALL: [Hostile; 5] = [
        Hostile::Garbage,
        Hostile::OversizePacket,
        Hostile::ReservedType,
        Hostile::TopicNotUtf8,
        Hostile::BadToken,
    ];
}

/// One MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s).
fn connect_packet(client_id: &str, password: Option<&str>) -> Vec<u8> {
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(client_id);
    if let Some(password) = password {
        connect.set_login("viewer", password);
    }
    let mut out = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect)
        .write(&mut out, 1 << 20)
        .expect("a CONNECT encodes");
    out.to_vec()
}

/// (front-door protocol errors, bad credentials, ingest's malformed and oversize payloads).
async fn hostile_counts(cp: &ControlPlane) -> anyhow::Result<(u64, u64, u64, u64)> {
    Ok((
        cp.counter("vantage_frontdoor_protocol_errors_total")
            .await?,
        cp.counter("vantage_frontdoor_refused_total{reason=\"credentials\"}")
            .await?,
        cp.counter("vantage_ingest_rejected_total{reason=\"malformed\"}")
            .await?,
        cp.counter("vantage_ingest_rejected_total{reason=\"oversize\"}")
            .await?,
    ))
}

/// Opens one TLS connection to the front door, sends what `hostile` sends, and waits for the
/// front door to close it. Returns whether the bytes went out (a TLS handshake can fail).
async fn send_hostile(
    port: u16,
    hostile: Hostile,
    agent: &rustls::ClientConfig,
    viewer: &rustls::ClientConfig,
    agent_id: &str,
) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = if hostile == Hostile::BadToken {
        viewer
    } else {
        agent
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls.clone()));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let Ok(mut stream) = connector
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
        .await
    else {
        return Ok(false);
    };
    let mut bytes = Vec::new();
    match hostile {
        Hostile::Garbage => bytes.extend_from_slice(b"\xf0\xff\xff\xffGET / HTTP/1.1\r\n\r\n"),
        Hostile::OversizePacket => {
            bytes.extend(connect_packet(agent_id, None));
            bytes.extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0x7f]);
        }
        Hostile::ReservedType => {
            bytes.extend(connect_packet(agent_id, None));
            bytes.extend_from_slice(&[0x00, 0x00]);
        }
        Hostile::TopicNotUtf8 => {
            bytes.extend(connect_packet(agent_id, None));
            bytes.extend_from_slice(&[0x30, 0x05, 0x00, 0x02, 0xff, 0xfe, b'x']);
        }
        Hostile::BadToken => bytes.extend(connect_packet("viewer", Some("vtok_not-a-token"))),
    }
    if stream.write_all(&bytes).await.is_err() {
        return Ok(false);
    }
    // The front door answers (a CONNACK, or nothing) and closes; read until it does.
    let mut sink = vec![0u8; 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the front door kept a {hostile:?} connection open"))?;
    Ok(true)
}

/// Many clients at once send broken MQTT (packets that are not MQTT, oversize, of a reserved
/// type, with a topic that is not UTF-8, a CONNECT with a bad token) and broken payloads on
/// their own topics (not JSON, over the payload limit). Every one is dropped and counted under
/// its reason, the control plane stays up and keeps ingesting, and its RSS stays flat from
/// round to round.
async fn malformed_mqtt_at_rate_is_dropped_and_counted_with_memory_flat(
    backend: Backend,
) -> anyhow::Result<()> {
    const WORKERS: usize = 16;
    const ROUNDS: usize = 6;
    /// Hostile connections per worker per round.
    const CONNECTIONS: usize = 25;
    /// Hostile payloads per worker per round.
    const PAYLOADS: usize = 40;

    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let pid = cp.pid().context("control plane pid")?;
    let mut identities = Vec::new();
    for _ in 0..WORKERS {
        identities.push(std::sync::Arc::new(
            MqttIdentity::enroll(&cp, "europe").await?,
        ));
    }
    let viewer = vantage_agent::tls::pinned_client(&identities[0].ca_pem)?;
    let base = hostile_counts(&cp).await?;
    let oversize_payload = vec![b' '; vantage_mqtt::MAX_PAYLOAD_BYTES + 1];

    let mut rss_after_round = Vec::new();
    let (mut protocol, mut credentials, mut payloads) = (0u64, 0u64, 0u64);
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for (worker, identity) in identities.iter().enumerate() {
            let identity = identity.clone();
            let viewer = viewer.clone();
            let oversize_payload = oversize_payload.clone();
            let port = cp.mqtt_port;
            tasks.push(tokio::spawn(async move {
                let agent = vantage_agent::tls::mutual_client(
                    &identity.ca_pem,
                    &identity.cert_pem,
                    &identity.key_pem,
                )?;
                let (mut protocol, mut credentials) = (0u64, 0u64);
                for i in 0..CONNECTIONS {
                    let hostile = Hostile::ALL[(worker + i + round) % Hostile::ALL.len()];
                    if send_hostile(port, hostile, &agent, &viewer, &identity.agent_id).await? {
                        match hostile {
                            Hostile::BadToken => credentials += 1,
                            _ => protocol += 1,
                        }
                    }
                }
                // Broken payloads on the worker's own topic, through a real session.
                let (client, mut eventloop) =
                    rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 64);
                connect(&mut eventloop).await?;
                let topic = format!("vantage/v1/agents/{}/results", identity.agent_id);
                for i in 0..PAYLOADS {
                    let payload = if i % 2 == 0 {
                        b"{\"v\":1,\"items\":[".to_vec()
                    } else {
                        oversize_payload.clone()
                    };
                    client
                        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload)
                        .await?;
                }
                // Every PUBACK in: the broker has taken each of them.
                let mut acked = 0;
                while acked < PAYLOADS {
                    if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                        eventloop.poll().await?
                    {
                        acked += 1;
                    }
                }
                anyhow::Ok((protocol, credentials))
            }));
        }
        for task in tasks {
            let (p, c) = task.await??;
            protocol += p;
            credentials += c;
        }
        payloads += (WORKERS * PAYLOADS) as u64;
        let expected = (
            base.0 + protocol,
            base.1 + credentials,
            base.2 + payloads / 2,
            base.3 + payloads / 2,
        );
        let counted = wait_for(
            "every hostile connection and payload counted",
            Duration::from_secs(30),
            || async {
                let now = hostile_counts(&cp).await.ok()?;
                (now.0 >= expected.0
                    && now.1 >= expected.1
                    && now.2 >= expected.2
                    && now.3 >= expected.3)
                    .then_some(now)
            },
        )
        .await?;
        assert_eq!(
            counted, expected,
            "(protocol errors, bad credentials, malformed, oversize)"
        );
        assert!(cp.is_running(), "the control plane died in round {round}");
        rss_after_round.push(vantage_tests::proc_sample(pid)?.rss_kib);
    }
    let sent = protocol + credentials + payloads;
    println!(
        "hostile: {protocol} broken connections, {credentials} bad tokens, {payloads} broken \
         payloads; control-plane RSS after each round (KiB): {rss_after_round:?}"
    );
    assert!(
        sent >= (ROUNDS * WORKERS * (CONNECTIONS + PAYLOADS)) as u64 * 9 / 10,
        "only {sent} hostile messages went out"
    );
    // Flat: the rounds after the first (which warms caches, pools and the allocator) add
    // less than 8 MiB together.
    let grown = rss_after_round[ROUNDS - 1].saturating_sub(rss_after_round[0]);
    assert!(
        grown < 8 * 1024,
        "RSS grew {grown} KiB over {} rounds: {rss_after_round:?}",
        ROUNDS - 1
    );

    // Still serving: a good row from a good session is stored.
    let identity = &identities[0];
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 16);
    connect(&mut eventloop).await?;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
        .publish(
            format!("vantage/v1/agents/{}/results", identity.agent_id),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&json!({"v": 1, "items": [{"seq": 1,
                "measured_at_ms": 1_700_000_000_000_i64, "check_id": "web", "ok": true,
                "reason": "status 200", "timings": {"total_ms": 1.5}}]}))?,
        )
        .await?;
    wait_for("the good row", Duration::from_secs(10), || async {
        let (_, rows) = cp
            .get(&format!(
                "/api/v1/results?agent={}&from_ms=0",
                identity.agent_id
            ))
            .await
            .ok()?;
        (rows.as_array()?.len() == 1).then_some(())
    })
    .await?;
    let (status, _) = cp.get("/healthz").await?;
    assert_eq!(status, 200);
    Ok(())
}
