//! `GET /api/v1/live`: the live feed, as a WebSocket when the request asks to upgrade and as
//! Server-Sent Events otherwise. Filters: `region`, `agent`, `check`, `kind`, `source`. Each message is
//! one JSON [`LiveEvent`](crate::hub::LiveEvent). A client first gets the latest event of
//! every key its filter passes (unless `latest=false`), then each update; a slow client gets the latest event per
//! key (its [`Outbox`] coalesces) and a `lagged` message counting what it missed of the rest.
//! Viewers (below operator) get every URL in an event scrubbed of credentials
//! ([`Shared::for_viewers`]). Revoking the caller's API token ends the feed.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::{ApiError, ApiQuery, Caller};
use crate::AppState;
use crate::counters::Counters;
use crate::hub::{Batch, Hub, LiveFilter, Next, Outbox, Shared, Subscription};
use crate::store::Role;

/// Most messages sent to a WebSocket client before one flush.
const BATCH: usize = 256;
/// Read buffer and largest message a WebSocket client may send.
const CLIENT_BUFFER: usize = 4096;
/// A WebSocket client that takes longer than this to take one batch is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    pub region: Option<String>,
    pub agent: Option<String>,
    pub check: Option<String>,
    pub kind: Option<String>,
    /// An event's source (`kind=event&source=zabbix`).
    pub source: Option<String>,
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
            source: query.source,
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
            .map_err(|e| ApiError::BadRequest(e.body_text()))?
            // Clients send nothing but control frames: small buffers, small messages.
            .read_buffer_size(CLIENT_BUFFER)
            .max_message_size(CLIENT_BUFFER)
            .max_frame_size(CLIENT_BUFFER);
        let (hub, counters) = (state.hub.clone(), state.counters.clone());
        return Ok(upgrade.on_upgrade(move |socket| async move {
            let feed = Feed::start(&hub, shown, counters);
            websocket(socket, feed, revoked).await;
        }));
    }
    let feed = Feed::start(&state.hub, shown, state.counters.clone());
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
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

/// One client's subscription and outbox. The client's own task drains the hub's stream into
/// the outbox each time it is ready to send, so a client costs work in proportion to what it
/// is sent: while it writes, new events wait in the hub's ring, and a keyed event that waits
/// in the outbox is replaced by a newer one of its key. A client more than [`BEHIND`] batches
/// behind (or a whole ring) skips them: it subscribes again at the present with the latest
/// event of each key updated since its place ([`Hub::subscribe_from`]), and is told how many
/// events without a key it skipped.
struct Feed {
    hub: Hub,
    receiver: broadcast::Receiver<Batch>,
    /// The number of the next event this client expects from the hub.
    next_seq: u64,
    /// Events without a key the hub had published up to `next_seq`.
    unkeyed_seen: u64,
    shown: Shown,
    outbox: Outbox,
    counters: Arc<Counters>,
    closed: bool,
}

/// Batches waiting in the ring past which a client catches up through the hub instead.
const BEHIND: usize = 16;

impl Feed {
    /// Subscribes and queues the latest state the filter passes (unless it asked not to).
    fn start(hub: &Hub, shown: Shown, counters: Arc<Counters>) -> Feed {
        let subscription = hub.subscribe_from(if shown.latest { 0 } else { u64::MAX });
        let mut feed = Feed {
            hub: hub.clone(),
            receiver: subscription.receiver,
            next_seq: subscription.seq,
            unkeyed_seen: subscription.unkeyed,
            shown,
            outbox: Outbox::default(),
            counters,
            closed: false,
        };
        for shared in subscription.snapshot {
            feed.accept(shared);
        }
        feed
    }

    fn accept(&mut self, shared: Arc<Shared>) {
        if let Some(shared) = self.shown.show(shared) {
            self.outbox.push(shared);
        }
    }

    /// Skips to the present: the latest event of each key updated since this client's place,
    /// and a count of the events without a key it skipped.
    fn catch_up(&mut self) {
        let Subscription {
            snapshot,
            receiver,
            seq,
            unkeyed,
        } = self.hub.subscribe_from(self.next_seq);
        self.outbox
            .missed(unkeyed.saturating_sub(self.unkeyed_seen));
        self.receiver = receiver;
        self.next_seq = seq;
        self.unkeyed_seen = unkeyed;
        for shared in snapshot {
            self.accept(shared);
        }
    }

    fn accept_batch(&mut self, batch: Batch) {
        self.next_seq = batch.first_seq + batch.events.len() as u64;
        self.unkeyed_seen =
            batch.unkeyed_before + batch.events.iter().filter(|s| !s.event.keyed()).count() as u64;
        for shared in batch.events.iter() {
            self.accept(shared.clone());
        }
    }

    fn take(&mut self, received: Result<Batch, broadcast::error::RecvError>) {
        match received {
            Ok(batch) => self.accept_batch(batch),
            Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(),
            Err(broadcast::error::RecvError::Closed) => self.closed = true,
        }
    }

    /// Moves everything the hub has ready into the outbox.
    fn drain(&mut self) {
        let before = self.outbox.coalesced;
        if self.receiver.len() > BEHIND {
            self.catch_up();
        }
        loop {
            match self.receiver.try_recv() {
                Ok(batch) => self.accept_batch(batch),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.catch_up(),
                Err(broadcast::error::TryRecvError::Closed) => {
                    self.closed = true;
                    break;
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
            }
        }
        let coalesced = self.outbox.coalesced - before;
        if coalesced > 0 {
            self.counters
                .live_coalesced
                .fetch_add(coalesced, Ordering::Relaxed);
        }
    }

    /// Up to `max` things to send, waiting for the first; empty once the hub is gone.
    /// Cancel-safe: nothing is taken from the hub or the outbox across an await.
    async fn next_batch(&mut self, max: usize) -> Vec<Next> {
        loop {
            self.drain();
            let mut batch = Vec::new();
            while batch.len() < max {
                match self.outbox.pop() {
                    Some(next) => batch.push(next),
                    None => break,
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
                    self.counters
                        .live_missed
                        .fetch_add(missed, Ordering::Relaxed);
                }
                return batch;
            }
            if self.closed {
                return batch;
            }
            let received = self.receiver.recv().await;
            self.take(received);
        }
    }

    /// The next thing to send, `None` once the hub is gone.
    async fn next(&mut self) -> Option<Next> {
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn websocket(socket: WebSocket, mut feed: Feed, revoked: impl Future<Output = ()>) {
    let (mut sink, mut incoming) = socket.split();
    // The client's own messages (it needs send none) are read by a task of their own, woken
    // only when some arrive; it ends when the client closes or goes away.
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
    let _reader = AbortOnDrop(tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        let _ = gone_tx.send(());
    }));
    let mut revoked = std::pin::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut revoked => {
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            _ = &mut gone => return,
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
        }
    }
}
