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

/// Segment size of each ingest filter's in-memory log in the router, counting each message's
/// overhead (vendored change 5). The log drops a segment once ingest has read past it
/// (vendored change 6: ingest is each such filter's only subscriber), so it holds what ingest
/// has not read yet plus at most this much.
const INGEST_SEGMENT_BYTES: usize = 1024 * 1024;
/// Segments of each ingest filter's log: up to 64 MiB per filter that ingest may fall behind
/// (a storm of logins, a slow commit) before messages are skipped; an agent resends what was
/// not acknowledged. Memory is spent only while ingest is behind: without the trimming, every
/// busy kind's log stayed full (10,000 agents: ~160 MiB of messages already stored).
const INGEST_SEGMENT_COUNT: usize = 64;
/// Segment size of each agent's own filters' logs (`config`, `cmd`, `results/ack`). Every
/// agent holds three, so this is paid per agent: with one 64 KiB segment that kept what was
/// read, an agent's acks alone would have grown its log to ~160 KiB of heap within two hours
/// (10,000 agents: 1.6 GB). Only that agent subscribes to them (the front door's rules), so
/// they drop what it has read (`trim_read`) and hold its unread messages plus one segment.
const AGENT_SEGMENT_BYTES: usize = 1024;
/// Segments of an agent's own log: at least two, because a log that is full pushes out its
/// oldest segment when the next message comes, and with one segment that is the active one,
/// whose newest message the subscriber may not have read yet (an ack published a moment
/// after another then skips the first: 63 of 10,000 agents starved of one ack each in 600 s).
/// An agent that falls further behind than this skips messages: a skipped ack costs a resend,
/// and a config is also retained.
const AGENT_SEGMENT_COUNT: usize = 4;
/// Segment size of a viewer filter's log (`status/#`, `events/#`, `incidents`): few filters,
/// shared by every viewer, with room for a burst of status changes. Also the size of any
/// other filter's log (none is expected: every topic an agent may publish has an ingest
/// filter).
const VIEWER_SEGMENT_BYTES: usize = 32 * 1024;
/// Segments of a viewer filter's log: two, for the reason given at [`AGENT_SEGMENT_COUNT`].
const VIEWER_SEGMENT_COUNT: usize = 2;

/// Log sizes of the ingest, agent and viewer filters, as rumqttd takes them: the router
/// matches a new filter against each pattern, and the last match wins (none: the default).
fn custom_segments() -> HashMap<String, SegmentConfig> {
    let ingest = SegmentConfig {
        max_segment_size: INGEST_SEGMENT_BYTES,
        max_segment_count: INGEST_SEGMENT_COUNT,
        trim_read: true,
    };
    let agent = SegmentConfig {
        max_segment_size: AGENT_SEGMENT_BYTES,
        max_segment_count: AGENT_SEGMENT_COUNT,
        trim_read: true,
    };
    topic::all_agents_filters()
        .into_iter()
        .map(|filter| (filter, ingest.clone()))
        .chain(
            topic::agent_filter_patterns()
                .into_iter()
                .map(|pattern| (pattern, agent.clone())),
        )
        .chain(
            topic::viewer_filter_patterns()
                .into_iter()
                .map(|pattern| (pattern, viewer_segment())),
        )
        .collect()
}

/// The log of a viewer filter, and of any filter no pattern names.
fn viewer_segment() -> SegmentConfig {
    SegmentConfig {
        max_segment_size: VIEWER_SEGMENT_BYTES,
        max_segment_count: VIEWER_SEGMENT_COUNT,
        trim_read: false,
    }
}

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

/// Publishes into the router from the control plane, and what agents receive also to an
/// external broker cluster when there is one ([`Publisher::with_cluster`]).
#[derive(Clone)]
pub struct Publisher {
    link: Arc<Mutex<LinkTx>>,
    cluster: Option<(
        tokio::sync::mpsc::Sender<crate::clusterlink::Outgoing>,
        Arc<crate::counters::Counters>,
    )>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    /// This publisher, also queueing what agents receive (`config`, `cmd`, `results/ack`)
    /// for an external broker cluster's publisher ([`crate::clusterlink::publish`]); a full
    /// queue drops and counts.
    pub fn with_cluster(
        mut self,
        queue: tokio::sync::mpsc::Sender<crate::clusterlink::Outgoing>,
        counters: Arc<crate::counters::Counters>,
    ) -> Publisher {
        self.cluster = Some((queue, counters));
        self
    }

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
        if let Some((queue, counters)) = &self.cluster {
            for (topic, payload, retain) in &messages {
                if crate::clusterlink::for_agents(topic)
                    && queue
                        .try_send((topic.clone(), payload.clone(), *retain))
                        .is_err()
                {
                    counters
                        .broker_publish_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
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

/// Receives what agents publish, in order: from the router, or (with an external broker
/// cluster) from both the router and the cluster ([`Subscription::merge`]).
pub enum Subscription {
    Router(RouterLink),
    Merged(tokio::sync::mpsc::Receiver<Incoming>),
}

/// The router's ingest link.
pub struct RouterLink {
    link: LinkRx,
}

impl Subscription {
    /// Merges what `cluster` brings with what the router brings. The router's messages pass
    /// through a task of their own, whose queue shares `cluster`'s bound (each source keeps its
    /// order).
    pub fn merge(
        self,
        cluster_sender: tokio::sync::mpsc::Sender<Incoming>,
        cluster: tokio::sync::mpsc::Receiver<Incoming>,
    ) -> Subscription {
        match self {
            Subscription::Router(mut router) => {
                tokio::spawn(async move {
                    while let Some(message) = router.next().await {
                        if cluster_sender.send(message).await.is_err() {
                            return;
                        }
                    }
                });
                Subscription::Merged(cluster)
            }
            Subscription::Merged(_) => self,
        }
    }

    /// The messages as a channel whose `recv` may be cancelled without losing one (ingest
    /// waits on it with a deadline): the router's pass through a task of their own with a
    /// queue of `bound` messages; a merged subscription is such a channel already.
    pub fn into_receiver(self, bound: usize) -> tokio::sync::mpsc::Receiver<Incoming> {
        match self {
            Subscription::Router(mut router) => {
                let (sender, receiver) = tokio::sync::mpsc::channel(bound.max(1));
                tokio::spawn(async move {
                    while let Some(message) = router.next().await {
                        if sender.send(message).await.is_err() {
                            return;
                        }
                    }
                });
                receiver
            }
            Subscription::Merged(receiver) => receiver,
        }
    }

    /// The next message; `None` when the router has stopped.
    pub async fn next(&mut self) -> Option<Incoming> {
        match self {
            Subscription::Router(router) => router.next().await,
            Subscription::Merged(receiver) => receiver.recv().await,
        }
    }
}

impl RouterLink {
    /// The next message from the router; `None` when it has stopped.
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
    /// The loopback address of rumqttd's listener (its readiness probe; sessions use
    /// [`Broker::streams`]).
    pub addr: SocketAddr,
    pub credential: InternalCredential,
    pub publisher: Publisher,
    pub streams: Streams,
}

/// Bytes buffered in each direction of a session's in-process pipe to the broker; a writer
/// waits when its direction is full, as on a socket.
const PIPE_BYTES: usize = 16 * 1024;

/// Opens MQTT connections to the router as in-process pipes, not loopback TCP: a session
/// then holds one descriptor (its client's socket) instead of three, and its packets cost
/// no loopback syscalls. The broker end is served by rumqttd exactly as an accepted TCP
/// connection (its CONNECT with the internal credential, auth hook, link, will).
#[derive(Clone)]
pub struct Streams {
    server: rumqttd::StreamServer,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streams")
    }
}

impl Streams {
    /// A new connection to the router: this end to write MQTT into; rumqttd serves the other
    /// on a task of its own that ends when either end closes.
    pub fn connect(&self) -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(self.server.serve(theirs));
        ours
    }
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
        // The in-process sessions get the same settings, internal credential included.
        let stream_settings = connections.clone();
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
                // whether or not the subscriber has read it (except the ingest filters, which
                // drop what ingest has read): `custom_segments` sizes each kind.
                max_segment_size: VIEWER_SEGMENT_BYTES,
                max_segment_count: VIEWER_SEGMENT_COUNT,
                custom_segment: Some(custom_segments()),
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
        let streams = Streams {
            server: broker.stream_server(stream_settings),
        };
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
                    cluster: None,
                },
                streams,
            },
            Subscription::Router(RouterLink { link: ingest_rx }),
        ))
    }
}

/// Reads and discards what the router sends to the publishing link (acks), re-arming it.
async fn drain(link: LinkRx) {
    let mut subscription = RouterLink { link };
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

    /// The router picks a filter's log by matching the filter against the custom patterns
    /// (`rumqttd::protocol::matches`, the last match wins; none: the default): the ingest
    /// filters get the large log that drops what was read, an agent's own filters a small
    /// one that drops what was read, a viewer's (shared) one that keeps it. Every log has
    /// at least two segments, so a full log never pushes out its active segment.
    #[test]
    fn each_filter_gets_the_log_of_its_kind() {
        let segments = custom_segments();
        let log = |filter: &str| {
            let matched: Vec<&SegmentConfig> = segments
                .iter()
                .filter(|(pattern, _)| rumqttd::protocol::matches(filter, pattern))
                .map(|(_, config)| config)
                .collect();
            // No filter matches patterns of two kinds, so "the last match wins" never
            // decides.
            assert!(matched.len() <= 1, "{filter} matches {}", matched.len());
            matched.first().map_or((64 * 1024, false), |config| {
                (
                    config.max_segment_size * config.max_segment_count,
                    config.trim_read,
                )
            })
        };
        for filter in topic::all_agents_filters() {
            assert_eq!(log(&filter), (64 * 1024 * 1024, true), "{filter}");
        }
        for config in segments.values().chain([&viewer_segment()]) {
            assert!(config.max_segment_count >= 2, "{config:?}");
        }
        for kind in [
            AgentTopicKind::Config,
            AgentTopicKind::Cmd,
            AgentTopicKind::ResultsAck,
        ] {
            let filter = topic::agent("ag-0123456789abcdef", kind);
            assert_eq!(log(&filter), (4 * 1024, true), "{kind:?}");
        }
        for viewer in [
            "vantage/v1/status/#",
            "vantage/v1/status/checks/web/europe",
            "vantage/v1/events/zabbix",
            "vantage/v1/incidents",
        ] {
            assert_eq!(log(viewer), (64 * 1024, false), "{viewer}");
        }
    }
}
