//! `GET /api/v1/live`: the live feed, as a WebSocket when the request asks to upgrade and as
//! Server-Sent Events otherwise. Filters: `region`, `agent`, `check`, `kind`. Each message is
//! one JSON [`LiveEvent`]; a client that falls behind gets a `lagged` message saying how many
//! updates it missed. Viewers (below operator) get every URL in an event scrubbed of
//! credentials ([`LiveEvent::for_viewers`]). Revoking the caller's API token ends the feed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::{ApiError, ApiQuery, Caller};
use crate::AppState;
use crate::hub::{LiveEvent, LiveFilter};
use crate::store::Role;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    pub region: Option<String>,
    pub agent: Option<String>,
    pub check: Option<String>,
    pub kind: Option<String>,
    /// API token, for clients that cannot set headers (browsers' EventSource, WebSocket).
    pub token: Option<String>,
}

/// Either upgrades to a WebSocket or answers with an SSE stream.
pub async fn live(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LiveQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let filter = Shown {
        filter: LiveFilter {
            region: query.region,
            agent: query.agent,
            check: query.check,
            kind: query.kind,
        },
        redact: caller.role < Role::Operator,
    };
    let receiver = state.hub.subscribe();
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
        return Ok(upgrade.on_upgrade(move |socket| websocket(socket, receiver, filter, revoked)));
    }
    let stream =
        futures_util::stream::unfold((receiver, filter), |(mut receiver, filter)| async move {
            let event = next_matching(&mut receiver, &filter).await?;
            let sse = match event {
                Ok(event) => Event::default()
                    .event(event.kind)
                    .json_data(&*event)
                    .unwrap_or_else(|_| Event::default().comment("unserializable")),
                Err(missed) => Event::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{missed}}}")),
            };
            Some((Ok::<_, Infallible>(sse), (receiver, filter)))
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
}

/// The next event passing `filter`: `Ok(event)`, `Err(missed)` after a lag, `None` at close.
async fn next_matching(
    receiver: &mut broadcast::Receiver<Arc<LiveEvent>>,
    shown: &Shown,
) -> Option<Result<Arc<LiveEvent>, u64>> {
    loop {
        match receiver.recv().await {
            Ok(event) if shown.filter.matches(&event) => {
                return Some(Ok(if shown.redact {
                    LiveEvent::for_viewers(event)
                } else {
                    event
                }));
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => return Some(Err(missed)),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn websocket(
    mut socket: WebSocket,
    mut receiver: broadcast::Receiver<Arc<LiveEvent>>,
    filter: Shown,
    revoked: impl Future<Output = ()>,
) {
    let mut revoked = std::pin::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut revoked => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            next = next_matching(&mut receiver, &filter) => {
                let text = match next {
                    Some(Ok(event)) => serde_json::to_string(&*event).unwrap_or_default(),
                    Some(Err(missed)) => format!("{{\"kind\":\"lagged\",\"missed\":{missed}}}"),
                    None => return,
                };
                if socket.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
