//! The agent's run loop: one MQTT session over mutual TLS, the local check scheduler, host
//! metrics, heartbeats and the spool.
//!
//! The MQTT event loop runs in its own task and reports connects, disconnects and incoming
//! messages over a channel; it reconnects with capped exponential backoff and jitter (rumqttc
//! itself would retry at once). On every CONNACK the agent subscribes again, says hello and
//! publishes `online` (retained; the last will says `offline`); once the control plane has
//! answered the hello ([`crate::hellogate`]) it resends everything the spool still holds. Checks run on the agent's own clock with jitter, so a lost link stops
//! nothing; their results and the metrics are spooled first (texts bounded, see
//! [`vantage_mqtt::text`]) and sent when connected, after one fsync of the spool for the
//! whole group (rows within 50 ms of the last flush share it, and nothing is sent before it). SIGTERM or SIGINT stops
//! the checks, spools the results already measured, syncs the spool and exits 0. The client
//! certificate is renewed over the session ([`crate::renew`]): a CSR at two thirds of its
//! lifetime, and once a checked certificate comes back on `cmd`, a clean DISCONNECT, a wait
//! for the server to close the old connection, and a reconnect with it (the TLS config is
//! swapped inside the event loop task; the last will is not sent on a clean disconnect, so
//! the agent never shows offline). With `[zabbix_sender]` configured, each metrics sample is
//! also handed to [`crate::zabbix_sender::ZabbixOut`], which sends it in its own task. With
//! `[relay]`, webhook bodies the relay listener took ([`crate::relay`]) are spooled as events
//! and synced before the sender is answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vantage_mqtt::{
    AgentAck, AgentTopic, CheckSpec, Command, CommandMessage, DesiredConfig, Heartbeat, Hello,
    MAX_CONFIG_BYTES, NodeState, ResultsAck, Status, decode, decode_limited, encode, topic,
};

use crate::config::AgentConfig;
use crate::enroll::{EnrollError, Identity};
use crate::hellogate::{Due, HelloGate};
use crate::metrics::Collector;
use crate::probe::{self, Outcome};
use crate::relay::{RelayRequest, Spooled};
use crate::renew::Renewal;
use crate::spool::{Kind, Spool, SpoolError};
use crate::zabbix_sender::ZabbixOut;

/// The agent's own topics it subscribes to on every CONNACK.
pub const SUBSCRIPTIONS: [AgentTopic; 3] =
    [AgentTopic::Config, AgentTopic::Cmd, AgentTopic::ResultsAck];
/// At QoS 0: what is lost comes again (the retained config at the next subscribe, an ack
/// when the agent resends; the embedded broker delivers at QoS 0 anyway), and on a broker
/// on NATS a QoS 1 subscription costs a JetStream consumer per topic per agent, which past
/// a few hundred agents the cluster refuses.
pub const SUBSCRIPTION_QOS: QoS = QoS::AtMostOnce;

/// Largest batch payload the agent publishes, in bytes.
const MAX_BATCH_BYTES: usize = 200 * 1024;
/// Group commit: rows measured within this window of the last flush share one fsync of the
/// spool and one publish (so a busy agent syncs at most ~20 times a second, and a lone row
/// waits at most this long).
const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(50);
/// Unacknowledged entries are sent again after this long.
const RESEND_AFTER: Duration = Duration::from_secs(30);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After our own DISCONNECT, how long the server has to close the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// After the server closed a connection we left, the pause before connecting again.
const RECONNECT_AFTER_CLOSE: Duration = Duration::from_millis(200);

/// A TLS config for the next connection and its generation (see [`Renewal`]).
type NextTls = (u64, Arc<rustls::ClientConfig>);

enum SessionEvent {
    /// A CONNACK, on a connection made with the TLS config of this generation (0: the one
    /// loaded at start; see [`Renewal`]).
    Connected(u64),
    Disconnected(String),
    Message(String, bytes::Bytes),
}

/// Loads the identity, enrolling first when needed (retrying while the control plane is
/// unreachable; a refusal is final).
///
/// # Errors
/// A refused enrollment or a broken state dir.
pub async fn identity(config: &AgentConfig) -> anyhow::Result<Identity> {
    if let Some(identity) = Identity::load(&config.state_dir)? {
        return Ok(identity);
    }
    let mut delay = Duration::from_secs(1);
    loop {
        match crate::enroll::enroll(config).await {
            Ok(identity) => {
                tracing::info!(agent = %identity.agent_id, region = %identity.region, "Enrolled");
                return Ok(identity);
            }
            Err(EnrollError::Unreachable { url, message }) => {
                tracing::warn!(%url, %message, "Control plane unreachable; retrying enrollment");
                tokio::time::sleep(jittered(delay)).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn jittered(delay: Duration) -> Duration {
    let factor: f64 = rand::rng().random_range(0.5..1.0);
    delay.mul_f64(factor)
}

fn config_path(config: &AgentConfig) -> std::path::PathBuf {
    config.state_dir.join("config.json")
}

/// The broker addresses of an identity's `mqtt_addr`: one `host:port`, or several separated
/// by commas (the nodes of a broker cluster, tried in turn).
///
/// # Errors
/// An entry that is not `host:port`, or none at all.
pub fn broker_addrs(mqtt_addr: &str) -> anyhow::Result<Vec<(String, u16)>> {
    let addrs = mqtt_addr
        .split(',')
        .map(|addr| {
            addr.trim()
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .with_context(|| {
                    format!("stored mqtt_addr {mqtt_addr:?} is not host:port[,host:port…]")
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!addrs.is_empty(), "stored mqtt_addr is empty");
    Ok(addrs)
}

/// The options of an MQTT session over mutual TLS to `addr` as `client_id`: a 10 s keep-alive,
/// a clean session, packets up to 1 MiB either way. The agent's sessions and the control
/// plane's own session on a broker cluster both start from these.
pub fn tls_session_options(
    client_id: String,
    addr: &(String, u16),
    tls: Arc<rustls::ClientConfig>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.0.clone(), addr.1);
    options
        .set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true)
        .set_max_packet_size(1024 * 1024, 1024 * 1024)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    options
}

/// The MQTT options of a connection to `addr`: the client id is the agent id (with `.`
/// written `~`, which the front door and a broker on NATS both take), the last will marks
/// the agent offline.
fn mqtt_options(id: &str, addr: &(String, u16), tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut options = tls_session_options(topic::nats_client_id(id), addr, tls);
    options.set_last_will(LastWill::new(
        topic::agent(id, AgentTopic::Status),
        encode(&Status {
            v: vantage_mqtt::PROTOCOL_VERSION,
            state: NodeState::Offline,
        }),
        QoS::AtLeastOnce,
        true,
    ));
    options
}

/// Runs the agent until the process is stopped.
///
/// # Errors
/// Start-up failures (identity, TLS, spool).
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let identity = identity(&config).await?;
    let mut spool = Spool::open(
        &config.state_dir,
        config.spool.max_entries,
        config.spool.max_bytes,
    )?;
    let tls = Arc::new(
        crate::tls::mutual_client(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)
            .context("cannot build the MQTT TLS configuration")?,
    );
    let mut renewal = Renewal::new(&identity, &config.state_dir, tls.clone())
        .context("cannot read the client certificate")?;
    // The TLS config the next connection uses, when it changes (renewal, or going back).
    let next_tls: Arc<std::sync::Mutex<Option<NextTls>>> = Arc::new(std::sync::Mutex::new(None));
    let addrs = broker_addrs(&identity.mqtt_addr)?;
    let id = identity.agent_id.clone();
    let options = mqtt_options(&id, &addrs[0], tls.clone());
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    eventloop.network_options.set_connection_timeout(10);

    let (events_tx, mut events) = mpsc::channel::<SessionEvent>(1024);
    let swap_tls = next_tls.clone();
    let session_id = id.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        // Set after our own DISCONNECT (a renewed certificate): until when to wait for the
        // server to close the old connection before dropping it ourselves.
        let mut closing: Option<tokio::time::Instant> = None;
        let mut tls_generation = 0;
        let mut current_tls = tls;
        // Which of the broker addresses the next connection goes to (each failure moves on).
        let mut addr_index = 0;
        loop {
            if eventloop.network.is_none()
                && let Some((generation, tls)) =
                    swap_tls.lock().ok().and_then(|mut next| next.take())
            {
                tls_generation = generation;
                current_tls = tls.clone();
                eventloop
                    .mqtt_options
                    .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
            }
            let polled = match closing {
                Some(deadline) => match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                    Ok(polled) => polled,
                    Err(_) => {
                        eventloop.clean();
                        closing = None;
                        continue;
                    }
                },
                None => eventloop.poll().await,
            };
            match polled {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    backoff = Duration::from_millis(500);
                    let connected = SessionEvent::Connected(tls_generation);
                    if events_tx.send(connected).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let message = SessionEvent::Message(publish.topic, publish.payload);
                    if events_tx.send(message).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    // Our own clean DISCONNECT. Reconnect only once the server has closed the
                    // old connection: the broker keys last wills by client id, and a new
                    // connection it sees before it is done with the old one can have the
                    // new connection's will (offline) published.
                    closing = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                    let reason = "reconnecting with a renewed certificate".to_owned();
                    if events_tx
                        .send(SessionEvent::Disconnected(reason))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) if closing.take().is_some() => {
                    // The server closed the connection we left: connect again soon, with the
                    // renewed certificate.
                    tokio::time::sleep(RECONNECT_AFTER_CLOSE).await;
                }
                Err(error) => {
                    let _ = events_tx
                        .send(SessionEvent::Disconnected(error.to_string()))
                        .await;
                    if addrs.len() > 1 {
                        // A node of a broker cluster is gone or refuses: try the next one.
                        addr_index = (addr_index + 1) % addrs.len();
                        eventloop.mqtt_options =
                            mqtt_options(&session_id, &addrs[addr_index], current_tls.clone());
                    }
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });

    let boot_id = {
        let mut bytes = [0u8; 8];
        rand::fill(&mut bytes[..]);
        hex::encode(bytes)
    };
    let started = std::time::Instant::now();
    let (results_tx, mut results) = mpsc::channel::<(String, i64, Outcome)>(1024);
    let mut scheduler = Scheduler::new(results_tx);
    let mut desired: Option<DesiredConfig> = std::fs::read(config_path(&config))
        .ok()
        .and_then(|bytes| decode_limited::<DesiredConfig>(&bytes, MAX_CONFIG_BYTES).ok());
    if let Some(desired) = &desired {
        scheduler.apply(&desired.checks);
    }
    let mut collector = Collector::new(config.per_core);
    // Host metrics also sent to Zabbix, by a task of its own that never holds this loop up.
    let zabbix = match &config.zabbix_sender {
        Some(zabbix) => Some(
            ZabbixOut::start(zabbix, &crate::enroll::hostname())
                .map_err(|message| anyhow::anyhow!(message))?,
        ),
        None => None,
    };
    // Webhooks from the node's network, spooled like results.
    let mut relay =
        match &config.relay {
            Some(relay) => Some(crate::relay::start(relay).await.with_context(|| {
                format!("cannot listen for relayed webhooks on {}", relay.listen)
            })?),
            None => None,
        };
    let metrics_period = |desired: &Option<DesiredConfig>| {
        let seconds = config
            .metrics_interval_s
            .or(desired.as_ref().map(|d| d.metrics_interval_s))
            .unwrap_or(10)
            .max(1);
        Duration::from_secs(u64::from(seconds))
    };
    let heartbeat_period = |desired: &Option<DesiredConfig>| {
        Duration::from_secs(u64::from(
            desired
                .as_ref()
                .map(|d| d.heartbeat_interval_s)
                .unwrap_or(10)
                .max(1),
        ))
    };
    let mut metrics_tick = tokio::time::interval(metrics_period(&desired));
    let mut heartbeat_tick = tokio::time::interval(heartbeat_period(&desired));
    let mut flush_tick = tokio::time::interval(GROUP_COMMIT_WINDOW);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the spool was last synced and sent: rows arriving within a window of it wait for
    // the next tick, so they share one fsync and one publish.
    let mut last_flush = std::time::Instant::now();
    let mut resend_tick = tokio::time::interval(Duration::from_secs(5));
    let mut connected = false;
    let mut hello_gate = HelloGate::default();
    // Rows lost because the spool could not be written, since this process started.
    let mut write_errors: u64 = 0;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                SessionEvent::Connected(tls_generation) => {
                    tracing::info!(agent = %id, "Connected");
                    connected = true;
                    for kind in SUBSCRIPTIONS {
                        let _ = client.try_subscribe(topic::agent(&id, kind), SUBSCRIPTION_QOS);
                    }
                    say_hello(&client, &id, &config, &boot_id, &spool, &desired);
                    hello_gate.connected(std::time::Instant::now(), spool.next_seq());
                    let online = Status { v: vantage_mqtt::PROTOCOL_VERSION, state: NodeState::Online };
                    let _ = client.try_publish(topic::agent(&id, AgentTopic::Status), QoS::AtLeastOnce, true, encode(&online));
                    // Rows wait for the hello's answer; then everything unacknowledged goes.
                    spool.mark_all_unsent();
                    match renewal.on_connected(tls_generation) {
                        Ok(Some(not_after_ms)) => tracing::info!(agent = %id, not_after_ms, "Connected with the renewed certificate; it replaced the old one"),
                        Ok(None) => {}
                        Err(error) => tracing::error!(%error, "Cannot promote the renewed certificate files; finishing at next start"),
                    }
                }
                SessionEvent::Disconnected(reason) => {
                    if connected {
                        tracing::warn!(agent = %id, %reason, "Disconnected");
                    } else {
                        tracing::debug!(agent = %id, %reason, "Connect failed");
                        if let Some(old_tls) = renewal.on_connect_failed() {
                            tracing::warn!(agent = %id, "The renewed certificate does not connect; going back to the old one and renewing again later");
                            if let Ok(mut next) = next_tls.lock() {
                                *next = Some(old_tls);
                            }
                        }
                    }
                    connected = false;
                    hello_gate.disconnected();
                }
                SessionEvent::Message(name, payload) => {
                    match topic::Topic::parse(&name) {
                        Ok(topic::Topic::Agent { kind: AgentTopic::ResultsAck, .. }) => {
                            if let Ok(ack) = decode::<ResultsAck>(&payload) {
                                if let Err(error) = spool.ack(&ack.ranges) {
                                    tracing::error!(%error, "Cannot record an ack");
                                }
                                if let Some(next_seq) = ack.hello
                                    && hello_gate.answered(next_seq)
                                {
                                    tracing::debug!(agent = %id, next_seq, "Hello answered; sending rows");
                                    flush(&client, &id, &mut spool, &mut write_errors);
                                    last_flush = std::time::Instant::now();
                                }
                            }
                        }
                        Ok(topic::Topic::Agent { kind: AgentTopic::Config, .. }) if !payload.is_empty() => {
                            match decode_limited::<DesiredConfig>(&payload, MAX_CONFIG_BYTES) {
                                Ok(config_update) => {
                                    if desired.as_ref().map(|d| d.revision) != Some(config_update.revision) {
                                        tracing::info!(revision = config_update.revision, n_checks = config_update.checks.len(), "Applying desired config");
                                        scheduler.apply(&config_update.checks);
                                        let _ = crate::enroll::write_private(&config_path(&config), &payload, 0o600);
                                        let old_metrics = metrics_period(&desired);
                                        let old_heartbeat = heartbeat_period(&desired);
                                        desired = Some(config_update);
                                        if metrics_period(&desired) != old_metrics {
                                            metrics_tick = tokio::time::interval(metrics_period(&desired));
                                        }
                                        if heartbeat_period(&desired) != old_heartbeat {
                                            heartbeat_tick = tokio::time::interval(heartbeat_period(&desired));
                                        }
                                        let ack = AgentAck { v: vantage_mqtt::PROTOCOL_VERSION, config_revision: desired.as_ref().map(|d| d.revision), request_id: None, result: None, error: None };
                                        let _ = client.try_publish(topic::agent(&id, AgentTopic::Ack), QoS::AtLeastOnce, false, encode(&ack));
                                    }
                                }
                                Err(error) => tracing::warn!(%error, "Ignoring an invalid desired config"),
                            }
                        }
                        Ok(topic::Topic::Agent { kind: AgentTopic::Cmd, .. }) => {
                            match decode::<CommandMessage>(&payload) {
                                Ok(message) => match message.command {
                                    Command::RunNow { check } => {
                                        let client = client.clone();
                                        let id = id.clone();
                                        tokio::spawn(async move {
                                            let measured_at_ms = crate::now_ms();
                                            let outcome = probe::run_check(&check).await;
                                            let ack = AgentAck {
                                                v: vantage_mqtt::PROTOCOL_VERSION,
                                                config_revision: None,
                                                request_id: Some(message.request_id),
                                                result: Some(outcome.into_result(0, &check.id, measured_at_ms)),
                                                error: None,
                                            };
                                            let _ = client.try_publish(topic::agent(&id, AgentTopic::Ack), QoS::AtLeastOnce, false, encode(&ack));
                                        });
                                    }
                                    Command::Restart => {
                                        tracing::info!("Restart requested; exiting for the service manager to restart");
                                        scheduler.stop();
                                        drain_and_sync(&mut results, &mut spool, &mut write_errors);
                                        return Ok(());
                                    }
                                    Command::RaiseSeq { from, next_seq } => {
                                        match spool.raise_seq(from, next_seq) {
                                            Ok(n) => {
                                                tracing::warn!(from, next_seq, n_renumbered = n, "The control plane holds seqs this state reused; renumbered them");
                                                if connected && hello_gate.is_open() {
                                                    flush(&client, &id, &mut spool, &mut write_errors);
                                                }
                                            }
                                            Err(error) => {
                                                write_errors += 1;
                                                tracing::error!(%error, "Cannot renumber the spool");
                                            }
                                        }
                                    }
                                    Command::RenewedCertificate { cert_pem, not_after_ms } => {
                                        match renewal.accept(&cert_pem) {
                                            Ok(new_tls) => {
                                                tracing::info!(request_id = %message.request_id, not_after_ms, "Received a renewed certificate; reconnecting with it");
                                                if let Ok(mut next) = next_tls.lock() {
                                                    *next = Some(new_tls);
                                                }
                                                sync(&mut spool, &mut write_errors);
                                                if client.try_disconnect().is_err() {
                                                    tracing::warn!("Cannot request a reconnect; the renewed certificate is used on the next one");
                                                }
                                            }
                                            Err(error) => tracing::warn!(request_id = %message.request_id, %error, "Refused a renewed certificate; asking again later"),
                                        }
                                    }
                                },
                                Err(error) => tracing::warn!(%error, "Ignoring an invalid command"),
                            }
                        }
                        _ => {}
                    }
                }
            },
            Some((check_id, measured_at_ms, outcome)) = results.recv() => {
                push_result(&mut spool, &mut write_errors, &check_id, measured_at_ms, outcome);
                // Take whatever else is already measured into the same group.
                for _ in 0..1000 {
                    let Ok((check_id, measured_at_ms, outcome)) = results.try_recv() else {
                        break;
                    };
                    push_result(&mut spool, &mut write_errors, &check_id, measured_at_ms, outcome);
                }
                if connected && hello_gate.is_open() && last_flush.elapsed() >= GROUP_COMMIT_WINDOW {
                    flush(&client, &id, &mut spool, &mut write_errors);
                    last_flush = std::time::Instant::now();
                }
            }
            Some(request) = next_relayed(&mut relay) => {
                let Some(relay) = relay.as_mut() else { continue };
                // Whatever else is waiting shares the one sync.
                let mut requests = vec![request];
                while requests.len() < 64 {
                    let Ok(more) = relay.requests.try_recv() else { break };
                    requests.push(more);
                }
                spool_relayed(&mut spool, &mut write_errors, &relay.source, requests);
                if connected && hello_gate.is_open() {
                    flush(&client, &id, &mut spool, &mut write_errors);
                    last_flush = std::time::Instant::now();
                }
            }
            _ = metrics_tick.tick() => {
                let measured_at_ms = crate::now_ms();
                let pushed = spool.push(Kind::Metrics, |seq| {
                    let mut sample = collector.sample(seq, measured_at_ms);
                    sample.bound_texts();
                    if let Some(zabbix) = &zabbix {
                        zabbix.offer(&sample);
                    }
                    String::from_utf8(encode(&sample)).unwrap_or_default()
                });
                count_push_error(pushed, &mut write_errors, "metrics");
                if connected && hello_gate.is_open() {
                    flush(&client, &id, &mut spool, &mut write_errors);
                }
            }
            _ = heartbeat_tick.tick() => {
                if connected {
                    let heartbeat = Heartbeat {
                        v: vantage_mqtt::PROTOCOL_VERSION,
                        at_ms: crate::now_ms(),
                        uptime_s: started.elapsed().as_secs(),
                        spool_len: spool.len() as u64,
                        spool_dropped_total: spool.dropped(),
                        spool_unsendable_total: spool.unsendable(),
                        spool_write_errors_total: write_errors,
                        next_seq: spool.next_seq(),
                        config_revision: desired.as_ref().map(|d| d.revision).unwrap_or(0),
                    };
                    let _ = client.try_publish(topic::agent(&id, AgentTopic::Heartbeat), QoS::AtMostOnce, false, encode(&heartbeat));
                }
            }
            _ = flush_tick.tick() => {
                if connected && hello_gate.is_open() {
                    flush(&client, &id, &mut spool, &mut write_errors);
                    last_flush = std::time::Instant::now();
                } else {
                    sync(&mut spool, &mut write_errors);
                }
            }
            _ = resend_tick.tick() => {
                spool.expire_sent(RESEND_AFTER);
                match hello_gate.due(std::time::Instant::now()) {
                    Due::Nothing => {}
                    Due::HelloAgain => {
                        tracing::info!(agent = %id, "The hello is not answered yet; saying it again");
                        say_hello(&client, &id, &config, &boot_id, &spool, &desired);
                        hello_gate.said_again(std::time::Instant::now(), spool.next_seq());
                    }
                    Due::GaveUp => {
                        tracing::warn!(agent = %id, "No answer to the hello; sending rows without it (a control plane that does not answer hellos)");
                        flush(&client, &id, &mut spool, &mut write_errors);
                        last_flush = std::time::Instant::now();
                    }
                }
            }
            () = sleep_until_due(renewal.due()) => {
                if !connected {
                    renewal.postpone();
                } else {
                    match renewal.request() {
                        Ok(request) => {
                            tracing::info!(request_id = %request.request_id, "Asking for a renewed client certificate");
                            let _ = client.try_publish(topic::agent(&id, AgentTopic::Csr), QoS::AtLeastOnce, false, encode(&request));
                        }
                        Err(error) => tracing::error!(%error, "Cannot make a key or CSR for renewal"),
                    }
                }
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping checks, syncing the spool, exiting");
                scheduler.stop();
                drain_and_sync(&mut results, &mut spool, &mut write_errors);
                return Ok(());
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping checks, syncing the spool, exiting");
                scheduler.stop();
                drain_and_sync(&mut results, &mut spool, &mut write_errors);
                return Ok(());
            }
        }
    }
}

/// Completes at `due`, or never.
async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The next body the relay took, or never when there is no relay.
async fn next_relayed(relay: &mut Option<crate::relay::Relay>) -> Option<RelayRequest> {
    match relay {
        Some(relay) => relay.requests.recv().await,
        None => std::future::pending().await,
    }
}

/// Spools relayed webhook bodies as events of `source` and syncs the spool once for them all,
/// then tells the listener, which answers each sender only now.
fn spool_relayed(
    spool: &mut Spool,
    write_errors: &mut u64,
    source: &str,
    requests: Vec<RelayRequest>,
) {
    let measured_at_ms = crate::now_ms();
    let mut answers = Vec::with_capacity(requests.len());
    for RelayRequest {
        body,
        signature,
        reply,
    } in requests
    {
        let pushed = spool.push(Kind::Event, |seq| {
            let event = vantage_mqtt::Event {
                seq,
                measured_at_ms,
                source: source.to_owned(),
                severity: String::new(),
                message: String::new(),
                relayed: Some(vantage_mqtt::RelayedBody { body, signature }),
            };
            String::from_utf8(encode(&event)).unwrap_or_default()
        });
        let answer = match pushed {
            Ok(seq) => Spooled::Seq(seq),
            Err(SpoolError::Unsendable { .. }) => Spooled::TooLarge,
            Err(error @ SpoolError::Io { .. }) => {
                *write_errors += 1;
                tracing::error!(%error, "Cannot spool a relayed webhook body");
                Spooled::Failed("the agent cannot write its spool".into())
            }
        };
        answers.push((reply, answer));
    }
    let synced = spool.sync();
    if let Err(error) = &synced {
        *write_errors += 1;
        tracing::error!(%error, "Cannot sync the spool");
    }
    for (reply, answer) in answers {
        let answer = match (answer, &synced) {
            (Spooled::Seq(_), Err(_)) => Spooled::Failed("the agent cannot sync its spool".into()),
            (answer, _) => answer,
        };
        let _ = reply.send(answer);
    }
}

/// Spools one check result, its texts bounded.
fn push_result(
    spool: &mut Spool,
    write_errors: &mut u64,
    check_id: &str,
    measured_at_ms: i64,
    outcome: Outcome,
) {
    let pushed = spool.push(Kind::Result, |seq| {
        String::from_utf8(encode(&outcome.into_result(seq, check_id, measured_at_ms)))
            .unwrap_or_default()
    });
    count_push_error(pushed, write_errors, "a result");
}

/// Logs a failed push; a journal failure counts as a write error (the spool itself counts
/// unsendable entries).
fn count_push_error(pushed: Result<u64, SpoolError>, write_errors: &mut u64, what: &str) {
    match pushed {
        Ok(_) => {}
        Err(error @ SpoolError::Unsendable { .. }) => {
            tracing::error!(%error, "Dropped {what} that no batch can carry");
        }
        Err(error @ SpoolError::Io { .. }) => {
            *write_errors += 1;
            tracing::error!(%error, "Cannot spool {what}");
        }
    }
}

/// Group commit of everything spooled since the last sync.
fn sync(spool: &mut Spool, write_errors: &mut u64) {
    if let Err(error) = spool.sync() {
        *write_errors += 1;
        tracing::error!(%error, "Cannot sync the spool");
    }
}

/// Spools the results already measured (the checks are stopped), then syncs: the agent's last
/// step before it exits.
fn drain_and_sync(
    results: &mut mpsc::Receiver<(String, i64, Outcome)>,
    spool: &mut Spool,
    write_errors: &mut u64,
) {
    let mut n = 0;
    while let Ok((check_id, measured_at_ms, outcome)) = results.try_recv() {
        push_result(spool, write_errors, &check_id, measured_at_ms, outcome);
        n += 1;
    }
    sync(spool, write_errors);
    tracing::info!(
        n_spooled = n,
        n_waiting = spool.len(),
        "Spool synced; unacknowledged entries are sent after the next start"
    );
}

/// Says hello: what the agent is, and the seq its spool numbers the next row with.
fn say_hello(
    client: &AsyncClient,
    id: &str,
    config: &AgentConfig,
    boot_id: &str,
    spool: &Spool,
    desired: &Option<DesiredConfig>,
) {
    let hello = Hello {
        v: vantage_mqtt::PROTOCOL_VERSION,
        version: crate::VERSION.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        os: std::env::consts::OS.to_owned(),
        hostname: crate::enroll::hostname(),
        labels: config.labels.clone(),
        capabilities: probe::CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        boot_id: boot_id.to_owned(),
        next_seq: spool.next_seq(),
        config_revision: desired.as_ref().map(|d| d.revision).unwrap_or(0),
    };
    let _ = client.try_publish(
        topic::agent(id, AgentTopic::Hello),
        QoS::AtLeastOnce,
        false,
        encode(&hello),
    );
}

/// Publishes what the spool has not sent yet, as batches per kind, after syncing it: nothing
/// (and no seq) reaches the control plane before it is on disk. A failed sync is counted and
/// the rows are sent anyway: delivery beats local durability, and the control plane notices
/// a seq that went backwards.
fn flush(client: &AsyncClient, id: &str, spool: &mut Spool, write_errors: &mut u64) {
    sync(spool, write_errors);
    loop {
        let (kind, payload) = match spool.next_batch(1000, MAX_BATCH_BYTES) {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(error) => {
                // The entries stay unsent: the next flush tries again.
                tracing::warn!(%error, "Cannot read spooled entries back to send them");
                return;
            }
        };
        let name = match kind {
            Kind::Result => AgentTopic::Results,
            Kind::Metrics => AgentTopic::Metrics,
            Kind::Event => AgentTopic::Events,
        };
        if client
            .try_publish(topic::agent(id, name), QoS::AtLeastOnce, false, payload)
            .is_err()
        {
            // The request queue is full: try again on the next tick.
            spool.mark_all_unsent();
            return;
        }
    }
}

/// One check's task: its first run at a random offset within its interval (at most 5 s), so
/// a new check shows a result quickly and agents do not fire together; then every interval,
/// each outcome sent to the session loop. Ends when the loop is gone.
///
/// The probe's future is boxed: it is ~10 KiB (hyper, TLS and DNS states), and a spawned
/// task keeps its whole future allocated while it sleeps. Boxed, it exists only while the
/// probe runs, so an idle check costs its timer and spec, not ~10 KiB (2,000 checks: ~20 MiB
/// before; BENCHMARKS.md, "HTTP throughput of one agent").
async fn every_interval(spec: Arc<CheckSpec>, results: mpsc::Sender<(String, i64, Outcome)>) {
    let period = Duration::from_secs(u64::from(spec.interval_s.max(1)));
    let spread = period.min(Duration::from_secs(5));
    let offset = spread.mul_f64(rand::rng().random_range(0.0..1.0));
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let measured_at_ms = crate::now_ms();
        let outcome = Box::pin(probe::run_check(&spec)).await;
        if results
            .send((spec.id.clone(), measured_at_ms, outcome))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Runs each assigned check on its own timer, with a random initial offset.
struct Scheduler {
    running: HashMap<String, (Arc<CheckSpec>, JoinHandle<()>)>,
    results: mpsc::Sender<(String, i64, Outcome)>,
}

impl Scheduler {
    /// Stops every check: no new work starts.
    fn stop(&mut self) {
        for (_, (_, handle)) in self.running.drain() {
            handle.abort();
        }
    }

    fn new(results: mpsc::Sender<(String, i64, Outcome)>) -> Scheduler {
        Scheduler {
            running: HashMap::new(),
            results,
        }
    }

    /// Keeps unchanged checks running, stops removed or changed ones, starts new ones.
    fn apply(&mut self, checks: &[CheckSpec]) {
        let wanted: HashMap<&str, &CheckSpec> = checks.iter().map(|c| (c.id.as_str(), c)).collect();
        self.running.retain(|id, (spec, handle)| {
            let keep = wanted.get(id.as_str()).is_some_and(|w| *w == &**spec);
            if !keep {
                handle.abort();
            }
            keep
        });
        for check in checks {
            if self.running.contains_key(&check.id) {
                continue;
            }
            let spec = Arc::new(check.clone());
            let handle = tokio::spawn(every_interval(spec.clone(), self.results.clone()));
            self.running.insert(check.id.clone(), (spec, handle));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_check_task_holds_no_probe_state() {
        let (results, _rx) = mpsc::channel(1);
        let spec = Arc::new(CheckSpec {
            id: "c".into(),
            interval_s: 1,
            timeout_ms: 1000,
            kind: vantage_mqtt::CheckKind::Http(vantage_mqtt::HttpCheck::get("http://127.0.0.1/")),
        });
        let probe = std::mem::size_of_val(&probe::run_check(&spec));
        let task = std::mem::size_of_val(&every_interval(spec.clone(), results));
        // Every assigned check is one such task, asleep almost all the time: 2,000 checks at
        // the probe's size would be ~20 MiB.
        assert!(
            task <= 1024,
            "a check task's future is {task} bytes (a probe's is {probe})"
        );
        assert!(probe > task, "probe {probe} bytes, task {task} bytes");
    }
}
