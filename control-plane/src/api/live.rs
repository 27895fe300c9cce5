//! `GET /api/v1/live`: the live feed, as a WebSocket when the request asks to upgrade and as
//! Server-Sent Events otherwise. Filters: `region`, `agent`, `check`, `kind`. Each message is
//! one JSON [`LiveEvent`](crate::hub::LiveEvent). A client first gets the latest event of
//! every key its filter passes (unless `latest=false`), then each update; a slow client gets the latest event per
//! key (its [`Outbox`] coalesces) and a `lagged` message counting what it missed of the rest.
//! Viewers (below operator) get every URL in an event scrubbed of credentials
//! ([`Shared::for_viewers`]). Revoking the caller's API token ends the feed.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{Notify, broadcast};

use super::{ApiError, ApiQuery, Caller};
use crate::AppState;
use crate::counters::Counters;
use crate::hub::{Hub, LiveFilter, Next, Outbox, Shared, Subscription};
use crate::store::Role;

/// Messages sent to a WebSocket client before one flush.
const BATCH: usize = 64;
/// A WebSocket client that takes longer than this to take one batch is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    pub region: Option<String>,
    pub agent: Option<String>,
    pub check: Option<String>,
    pub kind: Option<String>,
    /// API token, for clients that cannot set headers (browsers' EventSource, WebSocket).
    pub token: Option<String>,
    /// Whether the latest event of every key the filter passes comes first (default true).
    pub latest: Option<bool>,
}

/// Either upgrades to a WebSocket or answers with an SSE stream.
pub async fn live(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LiveQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let shown = Shown {
        filter: LiveFilter {
            region: query.region,
            agent: query.agent,
            check: query.check,
            kind: query.kind,
        },
        redact: caller.role < Role::Operator,
        latest: query.latest.unwrap_or(true),
    };
    // The feed ends when the caller's token is revoked.
    let revoked = state.registry.token_revoked(caller.token_id.clone());
    let wants_upgrade = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if wants_upgrade {
        let (mut parts, _body) = request.into_parts();
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let (hub, counters) = (state.hub.clone(), state.counters.clone());
        return Ok(upgrade.on_upgrade(move |socket| async move {
            let feed = Feed::start(&hub, shown, counters);
            websocket(socket, feed, revoked).await;
        }));
    }
    let feed = Feed::start(&state.hub, shown, state.counters.clone());
    let stream = futures_util::stream::unfold(feed, |feed| async move {
        let sse = match feed.next().await? {
            Next::Event(shared) => Event::default()
                .event(shared.event.kind)
                .data(shared.json().as_str()),
            Next::Lagged { missed } => Event::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
        };
        Some((Ok::<_, Infallible>(sse), feed))
    })
    .take_until(revoked);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// What one client sees: the events its filter passes, redacted when it is a viewer.
struct Shown {
    filter: LiveFilter,
    redact: bool,
    /// The latest state first.
    latest: bool,
}

impl Shown {
    fn show(&self, shared: Arc<Shared>) -> Option<Arc<Shared>> {
        if !self.filter.matches(&shared.event) {
            None
        } else if self.redact {
            Some(Shared::for_viewers(shared))
        } else {
            Some(shared)
        }
    }
}

/// One client's outbox and the task that fills it from the hub.
struct Feed {
    inner: Arc<FeedInner>,
    reader: tokio::task::JoinHandle<()>,
}

struct FeedInner {
    outbox: Mutex<Outbox>,
    ready: Notify,
    closed: AtomicBool,
    counters: Arc<Counters>,
}

impl FeedInner {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues events, counting those a newer one replaced.
    fn push(&self, events: impl IntoIterator<Item = Arc<Shared>>, missed: u64) {
        let mut outbox = self.outbox();
        let before = outbox.coalesced;
        outbox.missed(missed);
        for event in events {
            outbox.push(event);
        }
        let coalesced = outbox.coalesced - before;
        drop(outbox);
        if coalesced > 0 {
            self.counters
                .live_coalesced
                .fetch_add(coalesced, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Feed {
    /// Subscribes, queues the latest state the filter passes, and starts following the hub.
    fn start(hub: &Hub, shown: Shown, counters: Arc<Counters>) -> Feed {
        let Subscription {
            snapshot,
            mut receiver,
        } = hub.subscribe();
        let inner = Arc::new(FeedInner {
            outbox: Mutex::new(Outbox::default()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            counters,
        });
        if shown.latest {
            inner.push(snapshot.into_iter().filter_map(|s| shown.show(s)), 0);
        }
        let hub = hub.clone();
        let filling = inner.clone();
        let reader = tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(shared) => {
                        if let Some(shared) = shown.show(shared) {
                            filling.push([shared], 0);
                        }
                    }
                    // This task fell behind the hub: the client is told how many events it
                    // missed and gets the latest of every key again.
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let latest = hub.latest_matching(&shown.filter);
                        filling.push(latest.into_iter().filter_map(|s| shown.show(s)), missed);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        filling.closed.store(true, Ordering::Release);
                        filling.ready.notify_one();
                        return;
                    }
                }
            }
        });
        Feed { inner, reader }
    }

    /// Up to `max` things to send, waiting for the first; empty once the hub is gone.
    async fn next_batch(&self, max: usize) -> Vec<Next> {
        loop {
            let mut batch = Vec::new();
            {
                let mut outbox = self.inner.outbox();
                while batch.len() < max {
                    match outbox.pop() {
                        Some(next) => batch.push(next),
                        None => break,
                    }
                }
            }
            if !batch.is_empty() {
                let missed: u64 = batch
                    .iter()
                    .map(|n| match n {
                        Next::Lagged { missed } => *missed,
                        Next::Event(_) => 0,
                    })
                    .sum();
                if missed > 0 {
                    self.inner
                        .counters
                        .live_missed
                        .fetch_add(missed, Ordering::Relaxed);
                }
                return batch;
            }
            if self.inner.closed.load(Ordering::Acquire) {
                return batch;
            }
            self.inner.ready.notified().await;
        }
    }

    /// The next thing to send, `None` once the hub is gone.
    async fn next(&self) -> Option<Next> {
        self.next_batch(1).await.pop()
    }
}

fn message(next: Next) -> Message {
    match next {
        Next::Event(shared) => Message::Text(shared.json()),
        Next::Lagged { missed } => {
            Message::text(format!("{{\"kind\":\"lagged\",\"missed\":{missed}}}"))
        }
    }
}

async fn websocket(socket: WebSocket, feed: Feed, revoked: impl Future<Output = ()>) {
    let (mut sink, mut incoming) = socket.split();
    let mut revoked = std::pin::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut revoked => {
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            batch = feed.next_batch(BATCH) => {
                if batch.is_empty() {
                    return;
                }
                let send = async {
                    for next in batch {
                        sink.feed(message(next)).await?;
                    }
                    sink.flush().await
                };
                match tokio::time::timeout(SEND_TIMEOUT, send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return,
                }
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
