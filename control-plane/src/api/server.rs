//! Serves the router over HTTPS: one task per connection under a connection cap, the TLS
//! handshake, the request heads and idle keep-alive connections each under a timeout,
//! HTTP/1.1 and HTTP/2 with upgrades (for WebSockets), the peer address as `ConnectInfo`.
//!
//! Limits ([`HttpLimits`], from the `VANTAGE_HTTP_*` settings):
//! - At most `max_connections` connections are open at once. The slot is taken at accept, in
//!   accept order, and travels with the socket: a connection upgraded to a WebSocket keeps
//!   its slot (and the one task that serves it) until the socket closes. Over the cap a
//!   connection is closed at once and counted. HTTP/2 runs at most 200 streams per
//!   connection (hyper's default).
//! - The TLS handshake must finish within `handshake_timeout`.
//! - A connection's first request head must be complete within `header_timeout` of the
//!   handshake; on HTTP/1 a later request head must be complete within `header_timeout` of
//!   its first byte.
//! - A connection with no request in flight is closed `idle_timeout` after its last request
//!   ended. A request is in flight from its head until its response body is finished or
//!   dropped, so a streaming response (the SSE live feed) is never idle. A WebSocket leaves
//!   HTTP at its upgrade and is not subject to these timers: the live feed is long-lived by
//!   design, needs a viewer token, and still holds its connection slot.
//!
//! Timers live in the connection's task ([`Activity`]); a timed-out connection is asked to
//! shut down gracefully (HTTP/1 closes an idle connection with a TLS close_notify) and is
//! dropped if that takes more than a second.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::counters::Counters;

/// The HTTPS listener's limits (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: HttpLimits,
    counters: Arc<Counters>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.http_over_limit.fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let slot = Slot::take(permit, counters.clone());
        tokio::spawn(connection(
            tcp,
            peer,
            acceptor.clone(),
            router.clone(),
            limits,
            slot,
        ));
    }
}

/// One connection: handshake, then HTTP under the header and idle timers.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    limits: HttpLimits,
    slot: Slot,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "HTTPS TLS handshake failed");
            return;
        }
        Err(_) => {
            slot.counters
                .http_handshake_timeout
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // HTTP/2 frames (window updates, pings) arrive between requests and say nothing about a
    // request head, so only HTTP/1 connections time later heads from their first byte.
    let http1 = tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice());
    let activity = Arc::new(Activity::new(http1));
    let counters = slot.counters.clone();
    let io = Tracked {
        inner: tls,
        activity: activity.clone(),
        _slot: slot,
    };
    let service = TowerToHyperService::new(router);
    let requests = activity.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            let in_flight = InFlight::begin(requests.clone());
            let response = hyper::service::Service::call(&service, request);
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    axum::body::Body::new(InFlightBody {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    loop {
        let timer = activity.deadline(&limits);
        let sleep = tokio::time::sleep_until(timer.map_or_else(Instant::now, |(at, _)| at));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => continue,
            () = sleep, if timer.is_some() => {
                // Re-read: a request may have begun since the deadline was computed.
                let Some((at, reason)) = activity.deadline(&limits) else { continue };
                if at > Instant::now() {
                    continue;
                }
                match reason {
                    Expiry::Header => &counters.http_header_timeout,
                    Expiry::Idle => &counters.http_idle_closed,
                }
                .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, ?reason, "Closing an HTTP connection on its timer");
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                return;
            }
        }
    }
}

/// A taken connection slot: counted in the open-connections gauge until dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<Counters>,
}

impl Slot {
    fn take(permit: OwnedSemaphorePermit, counters: Arc<Counters>) -> Slot {
        counters
            .gauges
            .http_connections_open
            .fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            counters,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters
            .gauges
            .http_connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which timer closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Header,
    Idle,
}

/// What a connection is doing, for its timers.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when a request begins or ends, or a request head starts arriving.
    changed: Notify,
    /// Whether bytes between requests start a head (HTTP/1; see [`connection`]).
    http1: bool,
}

struct ActivityState {
    in_flight: usize,
    /// Whether any request has ended on this connection.
    served: bool,
    /// The handshake's end, or the end of the last request.
    since: Instant,
    /// The first byte read since `since` while nothing was in flight.
    head_started: Option<Instant>,
}

impl Activity {
    fn new(http1: bool) -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                served: false,
                since: Instant::now(),
                head_started: None,
            }),
            changed: Notify::new(),
            http1,
        }
    }

    fn update(&self, change: impl FnOnce(&mut ActivityState) -> bool) {
        let changed = match self.state.lock() {
            Ok(mut state) => change(&mut state),
            Err(_) => false,
        };
        if changed {
            self.changed.notify_one();
        }
    }

    fn bytes_read(&self) {
        if !self.http1 {
            return;
        }
        self.update(|state| {
            if state.in_flight > 0 || state.head_started.is_some() {
                return false;
            }
            state.head_started = Some(Instant::now());
            true
        });
    }

    /// When the connection must close and why; `None` while a request is in flight.
    fn deadline(&self, limits: &HttpLimits) -> Option<(Instant, Expiry)> {
        let state = self.state.lock().ok()?;
        if state.in_flight > 0 {
            return None;
        }
        Some(match (state.served, state.head_started) {
            (false, _) => (state.since + limits.header_timeout, Expiry::Header),
            (true, Some(started)) => (started + limits.header_timeout, Expiry::Header),
            (true, None) => (state.since + limits.idle_timeout, Expiry::Idle),
        })
    }
}

/// One request in flight, from its head until its response body is done or dropped.
struct InFlight {
    activity: Arc<Activity>,
}

impl InFlight {
    fn begin(activity: Arc<Activity>) -> InFlight {
        activity.update(|state| {
            state.in_flight += 1;
            state.head_started = None;
            true
        });
        InFlight { activity }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.update(|state| {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.served = true;
                state.since = Instant::now();
                state.head_started = None;
            }
            true
        });
    }
}

/// A response body that keeps its request in flight until it is finished or dropped.
struct InFlightBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Body for InFlightBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TLS stream, noting reads for the timers and holding the connection slot.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_connections: 1,
            handshake_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn timers_follow_requests_in_flight() {
        let activity = Arc::new(Activity::new(true));
        let start = Instant::now();
        // Fresh: the first head is due within the header timeout of the handshake, bytes or
        // not.
        let (at, expiry) = activity.deadline(&limits()).unwrap();
        assert_eq!(expiry, Expiry::Header);
        assert!(at <= start + Duration::from_secs(2));
        activity.bytes_read();
        assert_eq!(activity.deadline(&limits()), Some((at, Expiry::Header)));
        // In flight: no timer, however long the response streams.
        let in_flight = InFlight::begin(activity.clone());
        activity.bytes_read();
        assert_eq!(activity.deadline(&limits()), None);
        drop(in_flight);
        // Served and quiet: idle, from the end of the request.
        let (at, expiry) = activity.deadline(&limits()).unwrap();
        assert_eq!(expiry, Expiry::Idle);
        assert!(at >= start + Duration::from_secs(30));
        // A later head starts: due within the header timeout of its first byte.
        activity.bytes_read();
        let (at, expiry) = activity.deadline(&limits()).unwrap();
        assert_eq!(expiry, Expiry::Header);
        assert!(at <= Instant::now() + Duration::from_secs(2));
        // HTTP/2 bytes between requests do not.
        let h2 = Arc::new(Activity::new(false));
        drop(InFlight::begin(h2.clone()));
        h2.bytes_read();
        assert_eq!(h2.deadline(&limits()).map(|(_, e)| e), Some(Expiry::Idle));
    }
}
