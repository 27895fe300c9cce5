//! The control plane's links to an external broker cluster (NATS ≥ 2.10, agents over MQTT):
//! what agents publish there reaches ingest through a JetStream work queue shared by every
//! replica, and what the control plane sends to agents (configs, commands, acks) is published
//! there over MQTT.
//!
//! Ingest: one stream ([`INGEST_STREAM`]) holds every agent-published subject; one durable
//! pull consumer ([`INGEST_CONSUMER`]) is shared by the replicas, so each message goes to one
//! of them and waits in the stream while none is connected. A message is acknowledged to the
//! broker once ingest has it: the agent's own spool is what makes rows durable (rows stay
//! there until the `results/ack` that follows their commit), so a replica killed between the
//! two costs a resend, never a row. Redelivered messages are stored once (rows are unique by
//! agent and seq).
//!
//! Publishing: over MQTT, because a message published natively reaches MQTT subscribers at
//! QoS 0, is never retained and is lost while the agent is away; a retained config must wait
//! for the agent. The publisher is a queue of bounded size in front of one MQTT session with
//! the control plane's broker client certificate; what does not fit is counted and dropped
//! (a config is republished at start and with the next change, an ack when the agent
//! resends).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use vantage_mqtt::topic::{self, AgentTopic};

use crate::AppState;
use crate::broker::Incoming;
use crate::callout::{CalloutError, broker_tls, connect};

/// The stream that holds what agents publish until a replica takes it.
pub const INGEST_STREAM: &str = "VANTAGE_INGEST";
/// The durable consumer the replicas share.
pub const INGEST_CONSUMER: &str = "vantage-ingest";
/// The most bytes the ingest stream holds while no replica reads; past it the oldest go
/// (their agents resend what was not acknowledged).
const STREAM_MAX_BYTES: i64 = 1 << 30;
/// The largest message the stream takes (an agent batch is at most 1 MiB).
const STREAM_MAX_MESSAGE: i32 = 1 << 20;
/// Messages handed out and not yet acknowledged, per consumer.
const MAX_ACK_PENDING: i64 = 20_000;
/// Messages waiting for the cluster publisher.
pub const PUBLISH_QUEUE: usize = 16_384;
/// Wait between attempts to reach the cluster.
const RETRY: Duration = Duration::from_secs(2);

/// A message for agents on the cluster: topic, payload, retained.
pub type Outgoing = (String, Vec<u8>, bool);

/// Whether a control-plane message goes to the cluster: only what agents receive.
pub fn for_agents(topic_name: &str) -> bool {
    matches!(
        topic::Topic::parse(topic_name),
        Ok(topic::Topic::Agent { kind, .. }) if !kind.is_agent_published()
    )
}

/// The subjects agents publish on, for every agent.
fn ingest_subjects() -> Vec<String> {
    AgentTopic::ALL
        .into_iter()
        .filter(|kind| kind.is_agent_published())
        .map(|kind| topic::nats_subject(&topic::agent("*", kind)))
        .collect()
}

/// Takes what agents publish on the cluster and hands it to ingest through `sender`, until
/// the process ends; reconnects after any failure.
pub async fn consume(
    state: AppState,
    urls: String,
    replicas: usize,
    sender: mpsc::Sender<Incoming>,
) {
    loop {
        let result = consume_once(&state, &urls, replicas, &sender).await;
        state
            .counters
            .gauges
            .broker_ingest_reading
            .store(0, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "Not reading agents' messages from the broker cluster")
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn consume_once(
    state: &AppState,
    urls: &str,
    replicas: usize,
    sender: &mpsc::Sender<Incoming>,
) -> Result<(), CalloutError> {
    use async_nats::jetstream::{consumer, stream};
    let request = |e: &dyn std::fmt::Display| CalloutError::Request(e.to_string());
    let client = connect(state, urls, None, "vantage ingest").await?;
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: INGEST_STREAM.to_owned(),
            subjects: ingest_subjects(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_bytes: STREAM_MAX_BYTES,
            max_message_size: STREAM_MAX_MESSAGE,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| request(&e))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            INGEST_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(INGEST_CONSUMER.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| request(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| request(&e))?;
    tracing::info!("Reading agents' messages from the broker cluster");
    state
        .counters
        .gauges
        .broker_ingest_reading
        .store(1, Ordering::Relaxed);
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| request(&e))?;
        let incoming = Incoming {
            topic: topic::topic_of_nats_subject(message.subject.as_str()),
            payload: message.payload.clone(),
        };
        if sender.send(incoming).await.is_err() {
            return Ok(());
        }
        state
            .counters
            .broker_ingested
            .fetch_add(1, Ordering::Relaxed);
        if let Err(error) = message.ack().await {
            tracing::debug!(%error, "Cannot acknowledge a message to the broker (it comes again)");
        }
    }
    Err(CalloutError::Request(
        "the consumer's message stream ended".into(),
    ))
}

/// Publishes what [`crate::broker::Publisher`] queues for agents to the cluster's MQTT
/// listeners `mqtt_addrs` (`host:port,…`), until the process ends.
pub async fn publish(state: AppState, mqtt_addrs: String, mut queue: mpsc::Receiver<Outgoing>) {
    let addrs = match vantage_agent::session::broker_addrs(&mqtt_addrs) {
        Ok(addrs) => addrs,
        Err(error) => {
            tracing::error!(%error, "No broker MQTT address to publish to");
            return;
        }
    };
    let client_id = {
        let mut bytes = [0u8; 6];
        rand::fill(&mut bytes[..]);
        format!("vantage-cp-{}", hex::encode(bytes))
    };
    // The identity is resolved at every handshake, so a renewed one is used from the next
    // connection on.
    let options = {
        let state = state.clone();
        move |index: usize| -> Result<rumqttc::MqttOptions, CalloutError> {
            let tls = std::sync::Arc::new(broker_tls(&state.pki)?);
            Ok(vantage_agent::session::tls_session_options(
                client_id.clone(),
                &addrs[index % addrs.len()],
                tls,
            ))
        }
    };
    let first = match options(0) {
        Ok(first) => first,
        Err(error) => {
            tracing::error!(%error, "The broker publisher cannot start");
            return;
        }
    };
    let (client, mut eventloop) = rumqttc::AsyncClient::new(first, 1024);
    let driver = tokio::spawn(async move {
        let mut index = 0;
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                    tracing::info!("Publishing to agents on the broker cluster");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "The broker publisher lost its session");
                    index += 1;
                    match options(index) {
                        Ok(next) => eventloop.mqtt_options = next,
                        Err(error) => {
                            tracing::warn!(%error, "The broker publisher keeps its last identity")
                        }
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    });
    let _driver = crate::lease::AbortOnDrop(driver);
    while let Some((topic_name, payload, retain)) = queue.recv().await {
        // Configs and commands at QoS 1: the broker keeps a retained config for the agent's
        // next subscription; acks at QoS 0 (an agent that missed one resends).
        let qos = if topic_name.ends_with("/results/ack") {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        if client
            .publish(topic_name, qos, retain, payload)
            .await
            .is_err()
        {
            return;
        }
    }
}
