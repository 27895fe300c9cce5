//! The public MQTT listener: TLS, identity and topic rules in front of the embedded broker.
//!
//! Every accepted TCP connection gets its own task, so a client that never finishes its TLS
//! handshake delays nobody; the handshake runs under a timeout, the number of open
//! connections is capped, and so is the number of handshakes in progress from one address. After TLS the first packet must be an MQTT 3.1.1 CONNECT:
//! - with a client certificate from our CA, the identity is the certificate's CN (an agent
//!   id); the client id must equal it (or its `.`-as-`~` form, [`topic::nats_client_id`],
//!   which agents use everywhere), the agent must not be revoked, and a last will may
//!   only target the agent's own `status` topic;
//! - without a client certificate, the CONNECT must carry an API token as password; the
//!   connection is a read-only viewer (its client id is prefixed so it can never take over an
//!   agent's session).
//!
//! The CONNECT is forwarded with the broker's internal credential, over an in-process pipe
//! to the router ([`crate::broker::Streams`]: one descriptor per session, the client's).
//! From then on every packet from the client is parsed with rumqttc's codec and checked:
//! PUBLISH and SUBSCRIBE outside the identity's topics close the connection and are counted.
//! Bytes from the broker to the client pass through unchanged. Revoking an agent closes its live connection; revoking an
//! API token closes the viewer sessions that logged in with it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Login, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use vantage_mqtt::{AgentTopic, topic};

use crate::broker::{InternalCredential, Streams};
use crate::counters::Counters;
use crate::pki::common_name;
use crate::store::{Role, Store};

/// Largest MQTT packet accepted from a client, in bytes.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// Bytes the session reads from the broker at a time on their way to the client.
const DOWNSTREAM_BYTES: usize = 2048;

/// Settings of the front door.
#[derive(Debug, Clone)]
pub struct FrontDoorSettings {
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    /// Most TLS handshakes in progress from one client address.
    pub max_pending_per_address: usize,
}

/// Handshakes in progress per client address.
#[derive(Debug, Default)]
struct Pending {
    counts: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// Releases one pending-handshake slot of an address when dropped.
struct PendingSlot {
    pending: Arc<Pending>,
    ip: std::net::IpAddr,
}

impl Pending {
    fn try_take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PendingSlot> {
        let mut counts = self.counts.lock().ok()?;
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            pending: self.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.pending.counts.lock()
            && let Some(count) = counts.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A client certificate from our CA; its CN, an agent id.
    Agent(String),
    /// No client certificate: an API token as password, read-only.
    Viewer,
}

/// Why the front door closed a connection after its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("second CONNECT")]
    SecondConnect,
    #[error("publish on foreign topic {0:?}")]
    ForeignPublish(String),
    #[error("viewer publish on {0:?}")]
    ViewerPublish(String),
    #[error("subscribe to foreign filter {0:?}")]
    ForeignSubscribe(String),
    #[error("viewer subscribe to {0:?}")]
    ViewerSubscribe(String),
}

impl Refused {
    /// Counts the refusal where it belongs.
    fn count(&self, counters: &Counters) {
        let counter = match self {
            Refused::SecondConnect => &counters.frontdoor_protocol_errors,
            Refused::ForeignPublish(_)
            | Refused::ViewerPublish(_)
            | Refused::ForeignSubscribe(_)
            | Refused::ViewerSubscribe(_) => &counters.frontdoor_acl_violations,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Checks one packet after CONNECT against the identity's topic rules: what an agent may
/// publish and subscribe to ([`topic::agent_may_publish`], [`topic::agent_may_subscribe`]),
/// and that a viewer only reads ([`topic::viewer_may_subscribe`]).
///
/// # Errors
/// The first rule the packet breaks.
pub fn police(packet: &Packet, identity: &Identity) -> Result<(), Refused> {
    match (packet, identity) {
        (Packet::Connect(_), _) => Err(Refused::SecondConnect),
        (Packet::Publish(p), Identity::Agent(id)) if !topic::agent_may_publish(id, &p.topic) => {
            Err(Refused::ForeignPublish(p.topic.clone()))
        }
        (Packet::Publish(p), Identity::Viewer) => Err(Refused::ViewerPublish(p.topic.clone())),
        (Packet::Subscribe(s), Identity::Agent(id)) => match s
            .filters
            .iter()
            .find(|f| !topic::agent_may_subscribe(id, &f.path))
        {
            Some(f) => Err(Refused::ForeignSubscribe(f.path.clone())),
            None => Ok(()),
        },
        (Packet::Subscribe(s), Identity::Viewer) => match s
            .filters
            .iter()
            .find(|f| !topic::viewer_may_subscribe(&f.path))
        {
            Some(f) => Err(Refused::ViewerSubscribe(f.path.clone())),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Takes the next whole MQTT packet from the bytes read so far: `Ok(None)` when more bytes are
/// needed. A packet over [`MAX_PACKET_BYTES`] or one that is not MQTT 3.1.1 is an error.
///
/// # Errors
/// What the codec found wrong.
pub fn next_packet(buffer: &mut BytesMut) -> Result<Option<Packet>, String> {
    match Packet::read(buffer, MAX_PACKET_BYTES) {
        Ok(packet) => Ok(Some(packet)),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// Shared state: the revoked sets (agents, API tokens) and the live agent connections.
#[derive(Debug, Default)]
pub struct Registry {
    revoked: RwLock<HashSet<String>>,
    live: Mutex<HashMap<String, Vec<watch::Sender<bool>>>>,
    /// Ids of revoked API tokens: MQTT viewer sessions and live feeds opened with one close.
    revoked_tokens: watch::Sender<HashSet<String>>,
}

impl Registry {
    /// Replaces the set of revoked API token ids (from the store), closing the sessions that
    /// hold a newly revoked one.
    pub fn set_revoked_tokens(&self, ids: impl IntoIterator<Item = String>) {
        let ids: HashSet<String> = ids.into_iter().collect();
        self.revoked_tokens.send_if_modified(|set| {
            let changed = *set != ids;
            *set = ids;
            changed
        });
    }

    /// Marks one API token revoked and closes the sessions that hold it.
    pub fn revoke_token(&self, id: &str) {
        self.revoked_tokens
            .send_if_modified(|set| set.insert(id.to_owned()));
    }

    /// Completes when the API token `id` is revoked (never, if the registry goes away).
    pub fn token_revoked(&self, id: String) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.revoked_tokens.subscribe();
        async move {
            if receiver.wait_for(|set| set.contains(&id)).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Replaces the revoked set (from the store) and closes any live revoked connection.
    pub fn set_revoked(&self, ids: impl IntoIterator<Item = String>) {
        let ids: HashSet<String> = ids.into_iter().collect();
        for id in &ids {
            self.kick(id);
        }
        if let Ok(mut revoked) = self.revoked.write() {
            *revoked = ids;
        }
    }

    /// Marks one agent revoked and closes its live connections.
    pub fn revoke(&self, id: &str) {
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.insert(id.to_owned());
        }
        self.kick(id);
    }

    /// The agents revoked, as last read from the store or revoked here.
    pub fn revoked_ids(&self) -> HashSet<String> {
        self.revoked.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Whether the agent `id` is revoked (also when the set cannot be read).
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.read().map(|r| r.contains(id)).unwrap_or(true)
    }

    fn kick(&self, id: &str) {
        if let Ok(mut live) = self.live.lock()
            && let Some(senders) = live.remove(id)
        {
            for sender in senders {
                let _ = sender.send(true);
            }
        }
    }

    fn register(&self, id: &str) -> watch::Receiver<bool> {
        let (sender, receiver) = watch::channel(false);
        if let Ok(mut live) = self.live.lock() {
            let senders = live.entry(id.to_owned()).or_default();
            senders.retain(|s| !s.is_closed());
            senders.push(sender);
        }
        receiver
    }
}

/// Everything a connection task needs.
pub struct FrontDoor {
    pub acceptor: TlsAcceptor,
    pub broker: Streams,
    pub credential: InternalCredential,
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub store: Store,
    pub settings: FrontDoorSettings,
    pending: Arc<Pending>,
}

impl FrontDoor {
    /// A front door; see the fields of [`FrontDoor`].
    pub fn new(
        acceptor: TlsAcceptor,
        broker: Streams,
        credential: InternalCredential,
        registry: Arc<Registry>,
        counters: Arc<Counters>,
        store: Store,
        settings: FrontDoorSettings,
    ) -> FrontDoor {
        FrontDoor {
            acceptor,
            broker,
            credential,
            registry,
            counters,
            store,
            settings,
            pending: Arc::default(),
        }
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(self.settings.max_connections));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "Front door accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.counters
                .frontdoor_accepted
                .fetch_add(1, Ordering::Relaxed);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.counters
                    .frontdoor_over_limit
                    .fetch_add(1, Ordering::Relaxed);
                drop(tcp);
                continue;
            };
            // Taken here, in accept order, so the limit is exact.
            let Some(pending_slot) = self
                .pending
                .try_take(peer.ip(), self.settings.max_pending_per_address)
            else {
                self.counters
                    .frontdoor_address_limit
                    .fetch_add(1, Ordering::Relaxed);
                drop(tcp);
                continue;
            };
            let door = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                door.handle(tcp, peer, pending_slot).await;
            });
        }
    }

    async fn handle(&self, tcp: TcpStream, peer: SocketAddr, pending_slot: PendingSlot) {
        let _ = tcp.set_nodelay(true);
        let tls =
            match tokio::time::timeout(self.settings.handshake_timeout, self.acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    self.counters
                        .frontdoor_handshake_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, %error, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    self.counters
                        .frontdoor_handshake_timeout
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
        let identity = match tls.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => match common_name(leaf) {
                Some(cn) if topic::valid_id(&cn) => Identity::Agent(cn),
                _ => {
                    self.counters
                        .frontdoor_identity_mismatch
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ => Identity::Viewer,
        };
        drop(pending_slot);
        if let Err(reason) = self.session(tls, identity.clone()).await {
            tracing::debug!(%peer, ?identity, %reason, "Front door closed a connection");
        }
    }

    async fn session<S>(&self, mut client: S, identity: Identity) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buffer = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout(
            self.settings.connect_timeout,
            read_packet(&mut client, &mut buffer),
        )
        .await
        .map_err(|_| {
            self.counters
                .frontdoor_connect_timeout
                .fetch_add(1, Ordering::Relaxed);
            "no CONNECT in time".to_owned()
        })?;
        let connect = match first {
            Ok(Packet::Connect(connect)) if connect.protocol == Protocol::V4 => connect,
            Ok(_) | Err(_) => {
                self.counters
                    .frontdoor_protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Err("first packet is not an MQTT 3.1.1 CONNECT".into());
            }
        };
        let (connect, token_id) = match self.admit(connect, &identity).await {
            Ok(admitted) => admitted,
            Err((code, reason)) => {
                let mut out = BytesMut::new();
                let _ = ConnAck::new(code, false).write(&mut out);
                let _ = client.write_all(&out).await;
                let _ = client.shutdown().await;
                return Err(reason);
            }
        };
        // A viewer is never kicked; keep its sender alive so the watch stays open.
        let (_viewer_kick, mut kicked) = match &identity {
            Identity::Agent(id) => (None, self.registry.register(id)),
            Identity::Viewer => {
                let (sender, receiver) = watch::channel(false);
                (Some(sender), receiver)
            }
        };
        let mut broker = self.broker.connect();
        let mut out = BytesMut::new();
        Packet::Connect(connect)
            .write(&mut out, MAX_PACKET_BYTES)
            .map_err(|e| e.to_string())?;
        broker
            .write_all(&out)
            .await
            .map_err(|e| format!("broker write failed: {e}"))?;
        self.counters
            .frontdoor_logins
            .fetch_add(1, Ordering::Relaxed);

        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (broker_read, mut broker_write) = tokio::io::split(broker);
        let downstream = async {
            // A small buffer: tokio's `copy` keeps 8 KiB per session, and the broker's
            // packets to an agent (acks, configs, commands) are mostly far smaller.
            let mut broker_read =
                tokio::io::BufReader::with_capacity(DOWNSTREAM_BYTES, broker_read);
            let _ = tokio::io::copy_buf(&mut broker_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
        };
        let upstream = async {
            loop {
                let packet = match read_packet(&mut client_read, &mut buffer).await {
                    Ok(packet) => packet,
                    Err(ReadError::Closed) => return "client closed".to_owned(),
                    Err(ReadError::Protocol(e)) => {
                        self.counters
                            .frontdoor_protocol_errors
                            .fetch_add(1, Ordering::Relaxed);
                        return format!("protocol error: {e}");
                    }
                };
                if let Err(refused) = police(&packet, &identity) {
                    refused.count(&self.counters);
                    return refused.to_string();
                }
                out.clear();
                if packet.write(&mut out, MAX_PACKET_BYTES).is_err()
                    || broker_write.write_all(&out).await.is_err()
                {
                    return "broker closed".to_owned();
                }
            }
        };
        let token_revoked = async {
            match token_id {
                Some(id) => self.registry.token_revoked(id).await,
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            reason = upstream => reason,
            () = downstream => "broker closed".to_owned(),
            _ = kicked.wait_for(|k| *k) => "agent revoked".to_owned(),
            () = token_revoked => "API token revoked".to_owned(),
        };
        Err(reason)
    }

    /// Checks a CONNECT against the identity and rewrites it for the broker; returns it with
    /// the id of a viewer's API token.
    async fn admit(
        &self,
        mut connect: Connect,
        identity: &Identity,
    ) -> Result<(Connect, Option<String>), (ConnectReturnCode, String)> {
        let mut token_id = None;
        match identity {
            Identity::Agent(id) => {
                if self.registry.is_revoked(id) {
                    self.counters
                        .frontdoor_revoked
                        .fetch_add(1, Ordering::Relaxed);
                    return Err((ConnectReturnCode::NotAuthorized, "revoked agent".into()));
                }
                if connect.client_id != *id && connect.client_id != topic::nats_client_id(id) {
                    self.counters
                        .frontdoor_identity_mismatch
                        .fetch_add(1, Ordering::Relaxed);
                    return Err((
                        ConnectReturnCode::BadClientId,
                        format!(
                            "client id {:?} is not the certificate's CN",
                            connect.client_id
                        ),
                    ));
                }
                if let Some(will) = &connect.last_will
                    && will.topic != topic::agent(id, AgentTopic::Status)
                {
                    self.counters
                        .frontdoor_acl_violations
                        .fetch_add(1, Ordering::Relaxed);
                    return Err((
                        ConnectReturnCode::NotAuthorized,
                        format!("last will on foreign topic {:?}", will.topic),
                    ));
                }
            }
            Identity::Viewer => {
                let token = connect.login.as_ref().map(|l| l.password.clone());
                let found = match token {
                    Some(token) if !token.is_empty() => {
                        self.store.api_token(&token).await.ok().flatten()
                    }
                    _ => None,
                };
                let role = found.as_ref().map(|token| token.role);
                token_id = found.map(|token| token.id);
                if role.is_none_or(|r| r < Role::Viewer) {
                    self.counters
                        .frontdoor_bad_credentials
                        .fetch_add(1, Ordering::Relaxed);
                    return Err((
                        ConnectReturnCode::BadUserNamePassword,
                        "no client certificate and no valid API token".into(),
                    ));
                }
                if connect.last_will.is_some() {
                    self.counters
                        .frontdoor_acl_violations
                        .fetch_add(1, Ordering::Relaxed);
                    return Err((
                        ConnectReturnCode::NotAuthorized,
                        "viewers may not set a last will".into(),
                    ));
                }
                let mut suffix = [0u8; 6];
                rand::fill(&mut suffix[..]);
                connect.client_id = format!("viewer-{}", hex::encode(suffix));
                connect.clean_session = true;
            }
        }
        connect.login = Some(Login::new(
            self.credential.username.clone(),
            self.credential.password.clone(),
        ));
        Ok((connect, token_id))
    }
}

enum ReadError {
    Closed,
    Protocol(String),
}

/// Reads one MQTT packet, buffering partial frames.
async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<Packet, ReadError> {
    loop {
        if let Some(packet) = next_packet(buffer).map_err(ReadError::Protocol)? {
            return Ok(packet);
        }
        buffer.reserve(4096);
        match reader.read_buf(buffer).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

/// Logs in to the broker with the internal credential and waits for a successful CONNACK:
/// proof that rumqttd (and not something else on that port) is serving. Then closes the
/// socket (without DISCONNECT, see below).
///
/// # Errors
/// A description of what failed.
pub async fn probe_broker(addr: SocketAddr, credential: &InternalCredential) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut connect = Connect::new("vantage-cp-readiness");
    connect.keep_alive = 5;
    connect.login = Some(Login::new(
        credential.username.clone(),
        credential.password.clone(),
    ));
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, MAX_PACKET_BYTES)
        .map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buffer = BytesMut::new();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        read_packet(&mut stream, &mut buffer),
    )
    .await
    .map_err(|_| "no CONNACK".to_owned())?;
    match reply {
        Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
            // Close without DISCONNECT: rumqttd would handle both the packet and the closed
            // socket as a disconnection and log the second one as an error.
            let _ = stream.shutdown().await;
            Ok(())
        }
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(ReadError::Closed) => Err("broker closed the connection".into()),
        Err(ReadError::Protocol(e)) => Err(e),
    }
}
