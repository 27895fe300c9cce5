//! Agents on an external broker cluster (three nats-server 2.15 nodes) whose connections
//! the control plane authorizes through the broker's auth callout: the front door's attacks
//! repeated against the cluster (foreign topics, wildcards, another agent's client id, a
//! last will on a foreign topic, the native port, no or foreign certificates), and a revoked
//! agent disconnected within seconds and refused after; the control plane's own broker users
//! confined to their tasks. SQLite: the callout reads the
//! revoked set, whichever store holds it.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use rustls_pki_types::pem::PemObject as _;
use vantage_control_plane::brokerauth::{self, BrokerSecrets, BrokerUser};
use vantage_mqtt::topic;
use vantage_tests::nats::NatsCluster;
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore, connect, wait_for};

/// A native client of the cluster holding `cert`/`key` (the control plane's own identity,
/// or an agent's on the wrong port); with `reconnect`, it moves to another node when its
/// node dies, else it gives up.
async fn native(
    cluster: &NatsCluster,
    ca: &str,
    cert: &str,
    key: &str,
    reconnect: bool,
) -> anyhow::Result<async_nats::Client> {
    let tls = vantage_agent::tls::mutual_client(ca, cert, key)?;
    let servers: Vec<async_nats::ServerAddr> = cluster
        .client_urls()
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok(async_nats::ConnectOptions::new()
        .tls_client_config(tls)
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(if reconnect { None } else { Some(0) })
        .connect(servers)
        .await?)
}

/// A native client of the cluster as one of the control plane's users (its certificate and
/// `password`); the server errors it receives (permission violations) arrive on the
/// channel.
async fn native_user(
    cp: &ControlPlane,
    cluster: &NatsCluster,
    user: BrokerUser,
    password: String,
) -> anyhow::Result<(
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    let tls = vantage_agent::tls::mutual_client(
        &cp.ca_pem,
        &std::fs::read_to_string(cp.data_dir.join("pki/broker-client.pem"))?,
        &std::fs::read_to_string(cp.data_dir.join("pki/broker-client.key"))?,
    )?;
    let servers: Vec<async_nats::ServerAddr> = cluster
        .client_urls()
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let (errors_in, errors) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.name().to_owned(), password)
        .tls_client_config(tls)
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(0))
        .event_callback(move |event| {
            let errors_in = errors_in.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_in.send(error.to_string());
                }
            }
        })
        .connect(servers)
        .await?;
    Ok((client, errors))
}

/// The next server error of a [`native_user`] client within 5 s.
async fn next_server_error(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .context("no server error")?
        .context("client gone")
}

/// The control plane's own broker users may do their task and nothing else: the system user
/// may look up connections but neither read the system account's subjects nor ask for
/// anything else; the callout user may publish nothing but replies. A wrong password is
/// refused.
async fn control_plane_users_are_confined(
    cp: &ControlPlane,
    cluster: &NatsCluster,
) -> anyhow::Result<()> {
    let secrets = BrokerSecrets::load(&cp.data_dir.join("pki"))?;
    let (system, mut errors) = native_user(
        cp,
        cluster,
        BrokerUser::System,
        secrets.password(BrokerUser::System),
    )
    .await?;
    let answer = system
        .request("$SYS.REQ.SERVER.PING.CONNZ", "{}".into())
        .await
        .context("the system user's connection lookup")?;
    assert!(
        String::from_utf8_lossy(&answer.payload).contains("connections"),
        "{answer:?}"
    );
    let _sub = system.subscribe("$SYS.>").await?;
    system.flush().await?;
    let error = next_server_error(&mut errors).await?;
    assert!(
        error.contains("Permissions Violation for Subscription"),
        "{error}"
    );
    system
        .publish("$SYS.REQ.SERVER.PING.VARZ", "{}".into())
        .await?;
    system.flush().await?;
    let error = next_server_error(&mut errors).await?;
    assert!(
        error.contains("Permissions Violation for Publish"),
        "{error}"
    );

    let (callout, mut errors) = native_user(
        cp,
        cluster,
        BrokerUser::Callout,
        secrets.password(BrokerUser::Callout),
    )
    .await?;
    callout
        .publish(brokerauth::CALLOUT_SUBJECT, "forged".into())
        .await?;
    callout.flush().await?;
    let error = next_server_error(&mut errors).await?;
    assert!(
        error.contains("Permissions Violation for Publish"),
        "{error}"
    );
    let _sub = callout.subscribe("_INBOX.>").await?;
    callout.flush().await?;
    let error = next_server_error(&mut errors).await?;
    assert!(
        error.contains("Permissions Violation for Subscription"),
        "{error}"
    );

    // The callout user's password does not open the system user.
    let wrong = native_user(
        cp,
        cluster,
        BrokerUser::System,
        secrets.password(BrokerUser::Callout),
    )
    .await;
    assert!(
        wrong.is_err(),
        "the callout's password opened the system user"
    );
    Ok(())
}

/// Connects `identity` to a node's MQTT port with `client_id` and polls it in the
/// background; its incoming publishes and its connection errors arrive on the channel.
async fn mqtt_session(
    identity: &MqttIdentity,
    client_id: &str,
    will: Option<rumqttc::LastWill>,
) -> anyhow::Result<(
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Result<(String, Vec<u8>), String>>,
)> {
    let mut options = identity.options(client_id)?;
    if let Some(will) = will {
        options.set_last_will(will);
    }
    options.set_clean_session(true);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    connect(&mut eventloop).await?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    let _ = sender.send(Ok((p.topic.clone(), p.payload.to_vec())));
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(ack))) => {
                    let _ = sender.send(Ok((
                        "suback".into(),
                        format!("{:?}", ack.return_codes).into_bytes(),
                    )));
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = sender.send(Err(error.to_string()));
                    return;
                }
            }
        }
    });
    Ok((client, receiver))
}

/// The next SUBACK's return codes on a session's channel.
async fn next_suback(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Result<(String, Vec<u8>), String>>,
) -> anyhow::Result<String> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .context("no SUBACK within 10 s")?
            .context("session ended")?;
        match event {
            Ok((topic, codes)) if topic == "suback" => return Ok(String::from_utf8(codes)?),
            Ok(_) => {}
            Err(error) => anyhow::bail!("session closed before its SUBACK: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_on_a_broker_cluster_stay_inside_their_topics_and_revocation_cuts_them_off()
-> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().join("data");
    let broker_dir = temp.path().join("broker");
    // Only the NATS side: agents enrolled here keep the front door's address.
    let (cluster, _) =
        NatsCluster::for_control_plane(&data_dir, &broker_dir, &["--name", "127.0.0.1"])?;
    let auth = std::fs::read_to_string(broker_dir.join("vantage-auth.conf"))?;
    let password = std::fs::read_to_string(data_dir.join("pki/broker-users.secret"))?;
    assert!(
        !auth.contains(password.trim()),
        "the broker config holds a password"
    );

    let urls = cluster.client_urls();
    let cp =
        ControlPlane::start_in(&store, &data_dir, &[("VANTAGE_BROKER_NATS_URLS", &urls)]).await?;
    let result = match attacks(&cp, &cluster).await {
        Ok(()) => control_plane_users_are_confined(&cp, &cluster).await,
        error => error,
    };
    if result.is_err() {
        eprintln!(
            "{}\n--- control plane\n{}",
            cluster.log_tail(),
            cp.log_tail()
        );
    }
    result
}

async fn attacks(cp: &ControlPlane, cluster: &NatsCluster) -> anyhow::Result<()> {
    let ca = &cp.ca_pem;
    let mut victim = MqttIdentity::enroll(cp, "europe").await?;
    let mut attacker = MqttIdentity::enroll(cp, "europe").await?;
    victim.mqtt_port = cluster.nodes[0].mqtt;
    attacker.mqtt_port = cluster.nodes[1].mqtt;

    // The cluster serves MQTT a few seconds after a fresh start (JetStream elects its
    // leaders): the victim's first connection waits for that.
    let started = Instant::now();
    let (victim_client, mut victim_events) = wait_for(
        "the cluster's first MQTT session",
        Duration::from_secs(60),
        || async {
            mqtt_session(&victim, &topic::nats_client_id(&victim.agent_id), None)
                .await
                .ok()
        },
    )
    .await?;
    eprintln!("MQTT on the cluster after {:?}", started.elapsed());
    victim_client
        .subscribe(
            topic::agent(&victim.agent_id, topic::AgentTopic::Config),
            rumqttc::QoS::AtMostOnce,
        )
        .await?;
    assert!(next_suback(&mut victim_events).await?.contains("Success"));

    // The control plane's own certificate reads every agent's subjects natively.
    let (cp_cert, cp_key) = (
        std::fs::read_to_string(cp.data_dir.join("pki/broker-client.pem"))?,
        std::fs::read_to_string(cp.data_dir.join("pki/broker-client.key"))?,
    );
    let observer = native(cluster, ca, &cp_cert, &cp_key, false).await?;
    let mut seen = observer.subscribe("vantage.v1.agents.>").await?;
    observer.flush().await?;

    // The attacker is admitted with its own client id ...
    let (attacker_client, mut attacker_events) =
        mqtt_session(&attacker, &topic::nats_client_id(&attacker.agent_id), None).await?;
    let publish = |client: &rumqttc::AsyncClient, topic: String, text: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish(
                    topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    text.as_bytes().to_vec(),
                )
                .await
        }
    };
    // ... publishes into the victim's results and its own config (dropped by the broker),
    publish(
        &attacker_client,
        topic::agent(&victim.agent_id, topic::AgentTopic::Results),
        r#"{"v":1,"items":[{"seq":1,"forged":true}]}"#,
    )
    .await?;
    publish(
        &attacker_client,
        topic::agent(&attacker.agent_id, topic::AgentTopic::Config),
        r#"{"forged":"config"}"#,
    )
    .await?;
    // ... then its own heartbeat, which arrives: a barrier, as the broker keeps one
    // publisher's order.
    publish(
        &attacker_client,
        topic::agent(&attacker.agent_id, topic::AgentTopic::Heartbeat),
        r#"{"own":"heartbeat"}"#,
    )
    .await?;
    let own_heartbeat = topic::nats_subject(&topic::agent(
        &attacker.agent_id,
        topic::AgentTopic::Heartbeat,
    ));
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), seen.next())
            .await
            .context("the attacker's own heartbeat did not arrive")?
            .context("observer closed")?;
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        assert!(
            !payload.contains("forged"),
            "a forgery passed: {} {payload}",
            message.subject
        );
        if message.subject.as_str() == own_heartbeat {
            break;
        }
    }

    // Subscribing to the victim's config, or to a wildcard, is refused (SUBACK failure).
    attacker_client
        .subscribe(
            topic::agent(&victim.agent_id, topic::AgentTopic::Config),
            rumqttc::QoS::AtMostOnce,
        )
        .await?;
    assert!(next_suback(&mut attacker_events).await?.contains("Failure"));
    attacker_client
        .subscribe("vantage/v1/#", rumqttc::QoS::AtMostOnce)
        .await?;
    assert!(next_suback(&mut attacker_events).await?.contains("Failure"));

    // The attacker's certificate with the victim's client id is refused, and the victim's
    // session is not kicked (it still receives what the control plane publishes to it).
    let impostor = mqtt_session(&attacker, &topic::nats_client_id(&victim.agent_id), None).await;
    let error = impostor
        .err()
        .context("an impostor client id was admitted")?;
    assert!(error.to_string().contains("NotAuthorized"), "{error}");
    observer
        .publish(
            topic::nats_subject(&topic::agent(&victim.agent_id, topic::AgentTopic::Config)),
            "after the impostor".into(),
        )
        .await?;
    observer.flush().await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), victim_events.recv())
            .await
            .context("the victim got nothing after the impostor tried")?
            .context("victim session gone")?;
        match event {
            Ok((_, payload)) if payload == b"after the impostor" => break,
            Ok(_) => {}
            Err(error) => anyhow::bail!("the impostor kicked the victim: {error}"),
        }
    }

    // A last will on the victim's status: the will never reaches the victim's subjects.
    let will = rumqttc::LastWill::new(
        topic::agent(&victim.agent_id, topic::AgentTopic::Status),
        r#"{"v":1,"state":"offline","forged":true}"#,
        rumqttc::QoS::AtLeastOnce,
        false,
    );
    let mut options = attacker.options(&topic::nats_client_id(&attacker.agent_id))?;
    options.set_last_will(will);
    let (_will_client, mut will_loop) = rumqttc::AsyncClient::new(options, 16);
    match connect(&mut will_loop).await {
        // Admitted: the connection then dies without a DISCONNECT, so the broker publishes
        // the will if it may (the quiet check below watches for it).
        Ok(()) => drop(will_loop),
        Err(error) => assert!(error.to_string().contains("NotAuthorized"), "{error}"),
    }

    // An agent's certificate on the native port is refused (agents are MQTT-only).
    let native_agent = native(cluster, ca, &attacker.cert_pem, &attacker.key_pem, false).await;
    assert!(
        native_agent.is_err(),
        "an agent certificate was admitted on the native port"
    );

    // No client certificate, or one from another CA: the TLS handshake fails.
    let stranger = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, victim.agent_id.clone());
    let foreign = params.self_signed(&stranger)?;
    let forged_identity = MqttIdentity {
        agent_id: victim.agent_id.clone(),
        cert_pem: foreign.pem(),
        key_pem: stranger.serialize_pem(),
        ca_pem: ca.clone(),
        mqtt_port: cluster.nodes[2].mqtt,
    };
    let error = mqtt_session(
        &forged_identity,
        &topic::nats_client_id(&victim.agent_id),
        None,
    )
    .await
    .err()
    .context("a certificate from another CA was admitted")?;
    eprintln!("foreign CA: {error}");
    // No client certificate at all (the server is verified, the client offers none).
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(
        vantage_tests::tls_options("anonymous", forged_identity.mqtt_port, anonymous),
        16,
    );
    let error = connect(&mut eventloop)
        .await
        .err()
        .context("a client without a certificate was admitted")?;
    eprintln!("no certificate: {error}");

    // Two seconds of quiet: nothing forged reached any agent subject (the will included).
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(message)) = tokio::time::timeout_at(quiet_until, seen.next()).await {
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        assert!(
            !payload.contains("forged"),
            "a forgery passed: {} {payload}",
            message.subject
        );
    }

    // Revoking the victim closes its live session within seconds, and it cannot return.
    let revoked_at = Instant::now();
    let (status, _) = cp
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/agents/{}", victim.agent_id),
            Some(&cp.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 204);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), victim_events.recv())
            .await
            .context("the revoked victim is still connected after 5 s")?;
        match event {
            Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    let cut_after = revoked_at.elapsed();
    eprintln!("revoked agent disconnected after {cut_after:?}");
    let error = mqtt_session(&victim, &topic::nats_client_id(&victim.agent_id), None)
        .await
        .err()
        .context("a revoked agent reconnected")?;
    assert!(error.to_string().contains("NotAuthorized"), "{error}");

    // Every refusal was counted by its reason.
    for (line, at_least) in [
        (
            "vantage_broker_callout_refused_total{reason=\"identity\"}",
            1,
        ),
        (
            "vantage_broker_callout_refused_total{reason=\"not_mqtt\"}",
            1,
        ),
        (
            "vantage_broker_callout_refused_total{reason=\"revoked\"}",
            1,
        ),
        (
            "vantage_broker_callout_allowed_total{identity=\"control_plane\"}",
            1,
        ),
        (
            "vantage_broker_callout_allowed_total{identity=\"agent\"}",
            2,
        ),
        ("vantage_broker_kicks_total", 1),
    ] {
        let value = cp.counter(line).await?;
        assert!(value >= at_least, "{line} = {value}");
    }
    Ok(())
}

/// The newest heartbeat's `spool_len` of `agent`, read natively off the cluster.
async fn spool_len(
    heartbeats: &mut async_nats::Subscriber,
    within: Duration,
) -> anyhow::Result<u64> {
    let message = tokio::time::timeout(within, heartbeats.next())
        .await
        .context("no heartbeat")?
        .context("subscription ended")?;
    let heartbeat: serde_json::Value = serde_json::from_slice(&message.payload)?;
    heartbeat["spool_len"].as_u64().context("spool_len")
}

/// Two replicas on one PostgreSQL read an agent's rows off the cluster's shared ingest
/// stream; the broker node the agent is connected to is killed -9 (the agent moves to
/// another node and its spool drains), then a replica is killed -9 mid-ingest (the other
/// takes every message): every seq is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_ingest_through_the_cluster_and_survive_node_and_replica_kills()
-> anyhow::Result<()> {
    let store = TestStore::create(Backend::Postgres).await?;
    let temp = tempfile::tempdir()?;
    let (dir_a, dir_b) = (temp.path().join("a"), temp.path().join("b"));
    let broker_dir = temp.path().join("broker");
    let (mut cluster, mut env) = NatsCluster::for_control_plane(&dir_a, &broker_dir, &[])?;
    env.push(("VANTAGE_METRICS_INTERVAL_S", "1".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = ControlPlane::start_in(&store, &dir_a, &env).await?;
    vantage_tests::share_replica_identity(&dir_a, &dir_b)?;
    let b = ControlPlane::start_in(&store, &dir_b, &env).await?;
    let result = async {
        // Both replicas read the ingest stream (one of them created it) before the agent
        // says hello: a message on a subject no stream holds yet reaches nobody.
        wait_for(
            "both replicas reading the cluster",
            Duration::from_secs(60),
            || async {
                let (x, y) = (
                    a.counter("vantage_broker_ingest_reading").await.ok()?,
                    b.counter("vantage_broker_ingest_reading").await.ok()?,
                );
                (x == 1 && y == 1).then_some(())
            },
        )
        .await?;
        crate::faults::checks_every_second(&a, "europe", 2).await?;
        // And a check that fails: judged on the leader from both replicas' rows.
        let closed = vantage_tests::free_port();
        let (status, body) = a
            .post(
                "/api/v1/checks",
                serde_json::json!({"id": "closed", "name": "closed", "interval_s": 1,
                    "timeout_ms": 500, "regions": ["europe"],
                    "kind": {"type": "tcp", "host": "127.0.0.1", "port": closed}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
        let token = a.enrollment_token("europe", 1).await?;
        let agent = vantage_tests::Agent::start(&a, &token, "metrics_interval_s = 1")?;
        let id = agent.wait_enrolled().await?;
        let stored = |at_least: usize| {
            let (b, id) = (&b, &id);
            async move {
                let (_, rows) = b
                    .get(&format!("/api/v1/results?agent={id}&limit=5000"))
                    .await
                    .ok()?;
                (rows.as_array()?.len() >= at_least).then_some(())
            }
        };
        wait_for(
            "results through the cluster",
            Duration::from_secs(60),
            || stored(4),
        )
        .await
        .with_context(|| agent.log())?;

        // Both replicas take messages off the shared stream.
        wait_for(
            "both replicas ingesting",
            Duration::from_secs(30),
            || async {
                let (x, y) = (
                    a.counter("vantage_broker_ingested_total").await.ok()?,
                    b.counter("vantage_broker_ingested_total").await.ok()?,
                );
                (x > 0 && y > 0).then_some(())
            },
        )
        .await?;

        // The failing check goes DOWN once, with one incident, whichever replica took its
        // rows.
        wait_for(
            "the failing check down",
            Duration::from_secs(60),
            || async {
                let (_, views) = b.get("/api/v1/verdicts").await.ok()?;
                views
                    .as_array()?
                    .iter()
                    .any(|v| v["check_id"] == "closed" && v["state"] == "down")
                    .then_some(())
            },
        )
        .await?;
        // Only the leader judged: the follower stored no transition.
        let (leader, follower) = if a.get("/healthz").await?.1["leader"] == true {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(leader.counter("vantage_verdict_transitions_total").await? >= 1);
        assert_eq!(
            follower
                .counter("vantage_verdict_transitions_total")
                .await?,
            0
        );

        let (cp_cert, cp_key) = (
            std::fs::read_to_string(dir_a.join("pki/broker-client.pem"))?,
            std::fs::read_to_string(dir_a.join("pki/broker-client.key"))?,
        );
        // It reconnects: it may be on the node killed below.
        let observer = native(&cluster, &a.ca_pem, &cp_cert, &cp_key, true).await?;
        let mut heartbeats = observer
            .subscribe(topic::nats_subject(&topic::agent(
                &id,
                topic::AgentTopic::Heartbeat,
            )))
            .await?;

        // Kill -9 the node the agent is on (it starts with the first address).
        cluster.kill_node(0);
        let killed_at = vantage_agent::now_ms();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let pool = b.store_pool().await?;
        crate::faults::drained(
            &pool,
            &id,
            (killed_at - 2_000, killed_at + 6_000),
            12,
            || agent.log(),
        )
        .await?;
        // The spool drains: acks reach the agent through another node.
        let drain_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Heartbeats come every 10 s (the default interval).
            let n = spool_len(&mut heartbeats, Duration::from_secs(15)).await?;
            if n <= 10 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < drain_deadline,
                "the spool holds {n} entries 60 s after the node kill\n{}",
                agent.log()
            );
        }

        crate::faults::reconnected(&agent)?;

        // Kill -9 a replica mid-ingest: the other takes every message.
        a.kill();
        let replica_killed_at = vantage_agent::now_ms();
        tokio::time::sleep(Duration::from_secs(6)).await;
        crate::faults::drained(
            &pool,
            &id,
            (replica_killed_at - 2_000, replica_killed_at + 4_000),
            10,
            || agent.log(),
        )
        .await?;
        // Rows the killed replica had taken off the stream but not committed were never
        // acknowledged to the agent: it sends them again 30 s after their first send
        // (RESEND_AFTER), through the other replica. Until then a seq may be missing; a
        // doubled one fails at once.
        let resent_by = Instant::now() + Duration::from_secs(60);
        let max = loop {
            match crate::faults::every_seq_once(&pool, &id).await {
                Ok(max) => break max,
                Err(error)
                    if error.to_string().contains("lost seqs") && Instant::now() < resent_by => {}
                Err(error) => return Err(error),
            }
        };
        eprintln!("every seq 1..={max} stored once");
        let (_, incidents) = b.get("/api/v1/incidents").await?;
        let for_closed: Vec<&serde_json::Value> = incidents
            .as_array()
            .context("incidents")?
            .iter()
            .filter(|i| i["subject"] == "check" && i["subject_id"] == "closed")
            .collect();
        assert_eq!(for_closed.len(), 1, "{for_closed:?}");
        assert_eq!(for_closed[0]["open"], true);
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!(
            "{}\n--- replica a\n{}\n--- replica b\n{}",
            cluster.log_tail(),
            a.log_tail(),
            b.log_tail()
        );
    }
    result
}
