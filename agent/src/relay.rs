//! The edge relay: a webhook listener on the node's network (`[relay]`) for a sender, such
//! as a Zabbix server in a private network, that cannot reach the control plane itself.
//!
//! A body is taken only from a sender with the source's secret (`Authorization: Bearer …`,
//! compared in constant time), only when it is a JSON object of at most
//! [`MAX_RELAYED_BODY_BYTES`]. The listener signs it with the secret (HMAC-SHA256, as a
//! webhook's `X-Vantage-Signature`) and hands it to the session, which spools it as an event
//! and syncs the spool; only then does the sender get its `200`. From there it is kept like a
//! result: it survives a kill or a power cut, is sent again until the control plane
//! acknowledges it, and is dropped only when the spool overflows its bounds (oldest first,
//! counted and reported). The control plane takes it through the source's own webhook path
//! (the same dedup keys, so a retried send is stored once) and checks the signature with the
//! source's secret: the relay cannot speak for a source whose secret it was not given. A
//! body the control plane refuses for good (its signature does not match the source's
//! current secret, the source is not a Zabbix or hmac source, the body is not that source's
//! shape) is acknowledged, counted as `vantage_events_relayed_total{outcome="refused"}` and
//! logged with the reason; a control plane older than the relay refuses relayed rows as
//! undecodable.
//!
//! Answers: `200 {"relayed": true, "seq": N}`; `401` for a missing or wrong secret; `400`
//! for a body that is not a JSON object; `413` over the bound; `405` for a method other than
//! POST; `503` (with `Retry-After`) when the session's queue is full or the spool cannot take
//! the body. Connections are bounded ([`MAX_CONNECTIONS`] in all, [`MAX_PER_PEER`] from one
//! address; more are closed at once), and so are the time to send a request's headers
//! ([`HEADER_TIMEOUT`]) and a connection's life ([`REQUEST_TIMEOUT`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::hmac;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use vantage_mqtt::MAX_RELAYED_BODY_BYTES;

use crate::config::RelayConfig;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest time a connection may take to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections from one address at once, so one host cannot take every slot.
pub const MAX_PER_PEER: usize = 8;
/// Longest time a connection may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (and read buffer) a connection may send.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Bodies waiting for the session to spool them.
const QUEUE: usize = 64;
/// Most of an oversize body read (and dropped) before the 413, so the sender sees the answer.
const DRAIN_BYTES: usize = 1024 * 1024;

/// Open connections per address.
type Peers = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in its address's count, given back on drop.
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(peers: &Peers, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = peers.lock().ok()?;
        let n = open.entry(ip).or_default();
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: Arc::clone(peers),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.peers.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A body the listener took, on its way to the spool; `reply` gets what became of it.
pub struct RelayRequest {
    pub body: String,
    pub signature: String,
    pub reply: oneshot::Sender<Spooled>,
}

/// What the session did with a relayed body.
#[derive(Debug)]
pub enum Spooled {
    /// Spooled and synced under this seq.
    Seq(u64),
    /// Encoded, it is larger than any batch may be.
    TooLarge,
    /// The spool could not take or sync it.
    Failed(String),
}

/// A running listener; dropping it stops it.
pub struct Relay {
    pub requests: mpsc::Receiver<RelayRequest>,
    pub local_addr: SocketAddr,
    pub source: String,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    key: hmac::Key,
    /// The secret's own tag, which a presented bearer's tag is verified against.
    secret_tag: hmac::Tag,
    queue: mpsc::Sender<RelayRequest>,
}

/// Binds `config.listen` and serves it until dropped.
///
/// # Errors
/// The address cannot be bound.
pub async fn start(config: &RelayConfig) -> std::io::Result<Relay> {
    let listener = TcpListener::bind(config.listen).await?;
    let local_addr = listener.local_addr()?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, config.secret.as_bytes());
    let (queue, requests) = mpsc::channel(QUEUE);
    let shared = Arc::new(Shared {
        secret_tag: hmac::sign(&key, config.secret.as_bytes()),
        key,
        queue,
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers: Peers = Arc::default();
    tracing::info!(%local_addr, source = %config.source, "Relaying webhooks");
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "Relay accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tracing::warn!(%peer, "Relay connection refused: {MAX_CONNECTIONS} already open");
                drop(stream);
                continue;
            };
            let Some(peer_slot) = PeerSlot::take(&peers, peer.ip()) else {
                tracing::warn!(%peer, "Relay connection refused: {MAX_PER_PEER} already open from this address");
                drop(stream);
                continue;
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, connection).await;
                drop(peer_slot);
                drop(permit);
            });
        }
    });
    Ok(Relay {
        requests,
        local_addr,
        source: config.source.clone(),
        task,
    })
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("5"),
        );
    }
    response
}

fn refuse(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    answer(
        status,
        serde_json::json!({ "error": { "message": message } }),
    )
}

/// Whether `authorization` is `Bearer <the secret>`, compared in constant time (the tags of
/// both under the secret's key).
fn authorized(shared: &Shared, authorization: Option<&str>) -> bool {
    let Some(token) = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return false;
    };
    hmac::verify(&shared.key, token.as_bytes(), shared.secret_tag.as_ref()).is_ok()
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "the relay takes POST only");
    }
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !authorized(shared, authorization) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong secret for this relay",
        );
    }
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a relayed body is at most {MAX_RELAYED_BODY_BYTES} bytes"),
        )
    };
    if declared.is_some_and(|n| n > DRAIN_BYTES) {
        return too_large();
    }
    // Read the body, keeping at most the bound; past it, read on (up to DRAIN_BYTES) and
    // drop it, so the sender reads the 413 rather than a reset connection.
    let mut body = request.into_body();
    let mut kept: Vec<u8> = Vec::new();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return refuse(StatusCode::BAD_REQUEST, "the body could not be read");
        };
        if let Ok(data) = frame.into_data() {
            read += data.len();
            if read > DRAIN_BYTES {
                return too_large();
            }
            if read <= MAX_RELAYED_BODY_BYTES {
                kept.extend_from_slice(&data);
            }
        }
    }
    if read > MAX_RELAYED_BODY_BYTES {
        return too_large();
    }
    let Ok(body) = String::from_utf8(kept) else {
        return refuse(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    if !matches!(
        serde_json::from_str::<serde_json::Value>(&body),
        Ok(serde_json::Value::Object(_))
    ) {
        return refuse(StatusCode::BAD_REQUEST, "the body is not a JSON object");
    }
    let signature = format!(
        "sha256={}",
        hex::encode(hmac::sign(&shared.key, body.as_bytes()).as_ref())
    );
    let (reply, spooled) = oneshot::channel();
    let queued = shared.queue.try_send(RelayRequest {
        body,
        signature,
        reply,
    });
    if queued.is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is busy relaying; retry",
        );
    }
    match spooled.await {
        Ok(Spooled::Seq(seq)) => answer(
            StatusCode::OK,
            serde_json::json!({ "relayed": true, "seq": seq }),
        ),
        Ok(Spooled::TooLarge) => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body, encoded for the control plane, is larger than a batch may be",
        ),
        Ok(Spooled::Failed(why)) => refuse(StatusCode::SERVICE_UNAVAILABLE, &why),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
    }
}
