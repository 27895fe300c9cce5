//! The embedded MQTT router (rumqttd) on a loopback-only listener, and the control plane's
//! in-process links to it.
//!
//! rumqttd is never exposed: only the front door ([`crate::frontdoor`]) connects to its
//! listener, with an internal credential generated per process and checked by rumqttd's
//! external auth hook. [`Broker::start`] runs rumqttd on its own OS thread (its `start` never
//! returns), creates every link before that, and waits until the listener answers before it
//! returns. Retained messages live only in rumqttd's memory: the store is the source of truth
//! and the control plane republishes them at start.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{
    Config, ConnectionSettings, Notification, RouterConfig, SegmentConfig, ServerSettings,
};
use tokio::sync::Mutex;
use vantage_mqtt::topic;

/// Segment size of each ingest filter's in-memory log in the router.
const INGEST_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// Segments of each ingest filter's log: at most 32 MiB per filter, whatever the uptime
/// (only the busy kinds, results, metrics and heartbeats, ever fill theirs).
const INGEST_SEGMENT_COUNT: usize = 4;
/// Segment size of every other filter's log (one segment each, plus the newest message).
const CLIENT_SEGMENT_BYTES: usize = 64 * 1024;

/// Errors of the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reserve a loopback port for the broker: {0}")]
    Port(std::io::Error),
    #[error("cannot link to the broker: {0}")]
    Link(String),
    #[error("the broker listener on {addr} did not come up within {waited_ms} ms")]
    NotReady { addr: SocketAddr, waited_ms: u128 },
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// The internal credential the front door presents to rumqttd.
#[derive(Clone)]
pub struct InternalCredential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for InternalCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Publishes into the router from the control plane.
#[derive(Clone)]
pub struct Publisher {
    link: Arc<Mutex<LinkTx>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    /// Publishes `payload` on `topic` (QoS 0), retained when `retain` is set. On the topics
    /// viewers may read (`status/`, `events/`, `incidents`) every URL in the payload's strings
    /// is scrubbed first ([`vantage_mqtt::redact::scrub_payload`]): a probe's reason can echo
    /// a URL with credentials in it, and every viewer token reads these topics.
    ///
    /// # Errors
    /// Fails only when the router has stopped.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), BrokerError> {
        self.publish_many(vec![(topic.to_owned(), payload, retain)])
            .await
    }

    /// [`Self::publish`] for many messages at once, in order: they are queued together and
    /// the router is woken once, so a burst of thousands of verdicts costs one wake-up, not
    /// one each.
    ///
    /// # Errors
    /// Fails only when the router has stopped.
    pub async fn publish_many(
        &self,
        messages: Vec<(String, Vec<u8>, bool)>,
    ) -> Result<(), BrokerError> {
        let mut packets: Vec<Packet> = messages
            .into_iter()
            .map(|(topic, payload, retain)| {
                let payload = if vantage_mqtt::topic::viewer_may_subscribe(&topic) {
                    vantage_mqtt::redact::scrub_payload(payload)
                } else {
                    payload
                };
                Packet::Publish(
                    Publish::new(
                        bytes::Bytes::from(topic),
                        bytes::Bytes::from(payload),
                        retain,
                    ),
                    None,
                )
            })
            .collect();
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        let mut link = self.link.lock().await;
        // All but the last go straight into the link's buffer; sending the last wakes the
        // router, which drains the whole buffer.
        link.buffer().extend(packets);
        link.send(last)
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Link(e.to_string()))
    }
}

/// A message that reached the control plane's ingest link.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// Receives what agents publish, in order.
pub struct Subscription {
    link: LinkRx,
}

impl Subscription {
    /// The next message; `None` when the router has stopped.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            match self.link.next().await {
                Ok(Some(Notification::Forward(forward))) => {
                    let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                    return Some(Incoming {
                        topic,
                        payload: forward.publish.payload,
                    });
                }
                Ok(Some(Notification::Unschedule)) => {
                    // The router parks a link that stops reading; re-arm it or it never wakes.
                    if self.link.wake().await.is_err() {
                        return None;
                    }
                }
                Ok(Some(_)) | Ok(None) => {}
                Err(_) => return None,
            }
        }
    }
}

/// The running embedded broker.
#[derive(Debug)]
pub struct Broker {
    /// The loopback address of rumqttd's listener.
    pub addr: SocketAddr,
    pub credential: InternalCredential,
    pub publisher: Publisher,
}

fn reserve_loopback_port() -> Result<SocketAddr, BrokerError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BrokerError::Port)?;
    listener.local_addr().map_err(BrokerError::Port)
}

impl Broker {
    /// Starts rumqttd on a free loopback port with `max_connections` and returns once it
    /// accepts the internal login, with the ingest subscription on `filter`.
    ///
    /// # Errors
    /// See [`BrokerError`].
    pub async fn start(
        max_connections: usize,
        max_payload_bytes: usize,
        filters: &[String],
    ) -> Result<(Broker, Subscription), BrokerError> {
        let addr = reserve_loopback_port()?;
        let mut secret = [0u8; 24];
        rand::fill(&mut secret[..]);
        let credential = InternalCredential {
            username: "vantage-frontdoor".to_owned(),
            password: hex::encode(secret),
        };
        let mut connections = ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: max_payload_bytes,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let expected = credential.clone();
        connections.set_auth_handler(move |_client_id, username: String, password: String| {
            let ok = username == expected.username && password == expected.password;
            async move { ok }
        });
        let server = ServerSettings {
            name: "loopback".to_owned(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections,
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: max_connections + 16,
                max_outgoing_packet_count: 200,
                // rumqttd keeps an in-memory log per subscription filter, sized by bytes
                // whether or not the subscriber has read it. The control plane's ingest
                // filters (one per kind agents publish) carry every agent's traffic: room for
                // seconds of a backlog at full load.
                // Every other filter (an agent's config, cmd or acks, a viewer's status) needs
                // only its newest messages: one small segment, so an agent's log holds its
                // last config and little more, however often configs change.
                max_segment_size: INGEST_SEGMENT_BYTES,
                max_segment_count: INGEST_SEGMENT_COUNT,
                custom_segment: Some(
                    topic::per_agent_filter_patterns()
                        .into_iter()
                        .map(|pattern| {
                            (
                                pattern,
                                SegmentConfig {
                                    max_segment_size: CLIENT_SEGMENT_BYTES,
                                    max_segment_count: 1,
                                },
                            )
                        })
                        .collect(),
                ),
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("loopback".to_owned(), server)])),
            v5: None,
            ws: None,
            cluster: None,
            console: None,
            bridge: None,
            prometheus: None,
            metrics: None,
        };
        let mut broker = rumqttd::Broker::new(config);
        let (publish_tx, publish_rx) = broker
            .link("vantage-cp-publisher")
            .map_err(|e| BrokerError::Link(e.to_string()))?;
        let (mut ingest_tx, ingest_rx) = broker
            .link("vantage-cp-ingest")
            .map_err(|e| BrokerError::Link(e.to_string()))?;
        for filter in filters {
            ingest_tx
                .subscribe(filter.as_str())
                .map_err(|e| BrokerError::Link(e.to_string()))?;
        }
        std::thread::Builder::new()
            .name("rumqttd".to_owned())
            .spawn(move || {
                // Keep the ingest link's sender alive as long as the router runs.
                let _ingest_tx = ingest_tx;
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "Embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;
        tokio::spawn(drain(publish_rx));

        // Ready once it takes our login: a bare connect-and-close makes rumqttd log an error.
        let started = Instant::now();
        loop {
            if crate::frontdoor::probe_broker(addr, &credential)
                .await
                .is_ok()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(BrokerError::NotReady {
                    addr,
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((
            Broker {
                addr,
                credential,
                publisher: Publisher {
                    link: Arc::new(Mutex::new(publish_tx)),
                },
            },
            Subscription { link: ingest_rx },
        ))
    }
}

/// Reads and discards what the router sends to the publishing link (acks), re-arming it.
async fn drain(link: LinkRx) {
    let mut subscription = Subscription { link };
    while subscription.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use vantage_mqtt::AgentTopic as AgentTopicKind;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loopback_broker_takes_only_the_internal_credential() {
        let (broker, _subscription) = Broker::start(100, 1024 * 1024, &topic::all_agents_filters())
            .await
            .unwrap();
        assert!(broker.addr.ip().is_loopback());
        crate::frontdoor::probe_broker(broker.addr, &broker.credential)
            .await
            .unwrap();
        let wrong = InternalCredential {
            username: broker.credential.username.clone(),
            password: "guess".into(),
        };
        let refused = crate::frontdoor::probe_broker(broker.addr, &wrong).await;
        assert!(refused.is_err(), "a wrong password logged in to the broker");
        let anonymous = InternalCredential {
            username: String::new(),
            password: String::new(),
        };
        assert!(
            crate::frontdoor::probe_broker(broker.addr, &anonymous)
                .await
                .is_err()
        );
        assert!(!format!("{:?}", broker.credential).contains(&broker.credential.password));
    }

    /// The router picks a filter's log size by matching the filter against these patterns
    /// (`rumqttd::protocol::matches`, the last match wins): every filter an agent or viewer
    /// can hold gets the small log, the ingest filter keeps the large one.
    #[test]
    fn only_the_ingest_filter_gets_the_large_log() {
        let small = |filter: &str| {
            topic::per_agent_filter_patterns()
                .iter()
                .any(|pattern| rumqttd::protocol::matches(filter, pattern))
        };
        for filter in topic::all_agents_filters() {
            assert!(!small(&filter), "{filter}");
        }
        for kind in [
            AgentTopicKind::Config,
            AgentTopicKind::Cmd,
            AgentTopicKind::ResultsAck,
        ] {
            assert!(
                small(&topic::agent("ag-0123456789abcdef", kind)),
                "{kind:?}"
            );
        }
        for viewer in [
            "vantage/v1/status/#",
            "vantage/v1/status/checks/web/europe",
            "vantage/v1/events/zabbix",
            "vantage/v1/incidents",
        ] {
            assert!(small(viewer), "{viewer}");
        }
    }
}
