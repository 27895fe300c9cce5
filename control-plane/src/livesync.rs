//! The live feed across replicas: what one replica commits reaches the WebSocket and SSE
//! clients of every replica. Each replica's hub hands its published batches to [`run`], which
//! NOTIFYs them on PostgreSQL ([`crate::store::live`]) packed into payloads of at most
//! [`MAX_PAYLOAD_BYTES`], and publishes what the other replicas NOTIFY into its own hub
//! ([`Hub::publish_relayed`], not relayed again). A replica sends only while another replica
//! listens (checked every [`PEER_CHECK`]), so a lone control plane on PostgreSQL pays nothing.
//! The leader also hands the relayed results and host metrics to its judge
//! ([`crate::verdict::judge_worker`]): while another replica leads, a replica judges nothing
//! ([`crate::lease::Lease::judges`]). A relayed check change wakes assignment and re-judging
//! ([`crate::checks::on_relayed_change`]).
//!
//! Like the hub itself, the relay never slows ingest and holds a bound (on the leader, the
//! receiving side waits for room in the judge's queue, as ingest's own commits do): a batch the relay
//! queue has no room for, an event too large for one payload and a payload PostgreSQL refused
//! are counted, not retried. A replica whose listening session drops misses what was sent
//! until it is back, as a client misses what happened while it was disconnected; state-like
//! events are superseded by the next of their key. On SQLite there is one process and nothing
//! runs here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::AppState;
use crate::counters::Counters;
use crate::hub::{LiveData, LiveEvent, Shared};
use crate::store::live::{LiveListener, LiveSender, MAX_PAYLOAD_BYTES};

/// Published batches waiting to be sent, at most.
pub const RELAY_QUEUE_BATCHES: usize = 4096;

/// How often a replica looks again whether another replica listens.
pub const PEER_CHECK: Duration = Duration::from_secs(2);

/// A payload as replicas send it.
#[derive(Deserialize)]
struct Relayed {
    /// The sending replica's random id (a replica ignores its own payloads).
    origin: String,
    events: Vec<RelayedEvent>,
}

/// A [`LiveEvent`] as it travels.
#[derive(Deserialize)]
struct RelayedEvent {
    kind: String,
    agent_id: String,
    region: String,
    #[serde(default)]
    check_id: Option<String>,
    #[serde(default)]
    source: Option<String>,
    at_ms: i64,
    data: serde_json::Value,
}

/// Relays this replica's live updates to the others and theirs to this one's clients, until
/// the process ends. Returns at once on SQLite.
pub async fn run(state: AppState) {
    let (sender, listener) = loop {
        match state.store.live_sessions().await {
            Ok(Some(sessions)) => break sessions,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "Cannot open the live feed's sessions; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes[..]);
    let origin = hex::encode(bytes);
    let (queue, batches) = mpsc::channel(RELAY_QUEUE_BATCHES);
    state.hub.relay_to(queue);
    tokio::join!(
        send(sender, batches, &origin, &state.counters),
        receive(listener, &origin, &state),
    );
}

async fn send(
    sender: LiveSender,
    mut batches: mpsc::Receiver<Arc<[Arc<Shared>]>>,
    origin: &str,
    counters: &Counters,
) {
    let mut peers = false;
    let mut checked: Option<Instant> = None;
    while let Some(batch) = batches.recv().await {
        if checked.is_none_or(|at| at.elapsed() >= PEER_CHECK) {
            match sender.listeners().await {
                Ok(n) => peers = n > 1,
                Err(error) => tracing::warn!(%error, "Cannot count the replicas listening"),
            }
            checked = Some(Instant::now());
        }
        if !peers {
            continue;
        }
        // What queued up meanwhile travels in the same payloads.
        let mut events: Vec<axum::extract::ws::Utf8Bytes> =
            batch.iter().map(|shared| shared.json()).collect();
        while events.len() < 4096
            && let Ok(more) = batches.try_recv()
        {
            events.extend(more.iter().map(|shared| shared.json()));
        }
        let (payloads, oversize) = pack(origin, &events);
        counters
            .live_relay_oversize
            .fetch_add(oversize, Ordering::Relaxed);
        for (payload, n) in payloads {
            match sender.notify(&payload).await {
                Ok(()) => counters.live_relay_sent.fetch_add(n, Ordering::Relaxed),
                Err(error) => {
                    tracing::warn!(%error, n, "Cannot relay live updates to the other replicas");
                    counters.live_relay_failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
    }
}

/// Packs event JSON texts into payloads of at most [`MAX_PAYLOAD_BYTES`] each, with how many
/// events each holds; an event that fits no payload is left out and counted (the second
/// value).
fn pack(origin: &str, events: &[impl std::ops::Deref<Target = str>]) -> (Vec<(String, u64)>, u64) {
    let head = format!("{{\"origin\":\"{origin}\",\"events\":[");
    let tail = "]}";
    let (mut payloads, mut oversize) = (Vec::new(), 0);
    let mut current = head.clone();
    let mut n = 0u64;
    for event in events {
        let event: &str = event;
        if head.len() + event.len() + tail.len() > MAX_PAYLOAD_BYTES {
            oversize += 1;
            continue;
        }
        if current.len() + 1 + event.len() + tail.len() > MAX_PAYLOAD_BYTES {
            current.push_str(tail);
            payloads.push((std::mem::replace(&mut current, head.clone()), n));
            n = 0;
        }
        if n > 0 {
            current.push(',');
        }
        current.push_str(event);
        n += 1;
    }
    if n > 0 {
        current.push_str(tail);
        payloads.push((current, n));
    }
    (payloads, oversize)
}

/// The results and host metrics among relayed events, as a batch to judge.
fn to_judge(events: &[LiveEvent]) -> crate::verdict::Judged {
    let mut judged = crate::verdict::Judged {
        results: Vec::new(),
        metrics: Vec::new(),
    };
    for event in events {
        let row = (event.agent_id.clone(), event.region.clone());
        match &event.data {
            LiveData::Result(result) => judged.results.push((row.0, row.1, (**result).clone())),
            LiveData::Metrics(metrics) => {
                judged.metrics.push((row.0, row.1, (**metrics).clone()));
            }
            LiveData::Event(_) | LiveData::Json(_) => {}
        }
    }
    judged
}

/// A relayed event's data, typed again where its kind is a row judging reads (a result, host
/// metrics) and it decodes as one; JSON otherwise (an `event` may be an integration's view).
fn relayed_data(kind: &str, data: serde_json::Value) -> LiveData {
    fn typed<T: serde::de::DeserializeOwned>(
        data: serde_json::Value,
        row: impl FnOnce(Box<T>) -> LiveData,
    ) -> LiveData {
        match T::deserialize(&data) {
            Ok(typed) => row(Box::new(typed)),
            Err(_) => LiveData::Json(data),
        }
    }
    match kind {
        "result" => typed(data, LiveData::Result),
        "metrics" => typed(data, LiveData::Metrics),
        _ => LiveData::Json(data),
    }
}

async fn receive(mut listener: LiveListener, origin: &str, state: &AppState) {
    let (hub, counters) = (&state.hub, &*state.counters);
    loop {
        let payload = match listener.recv().await {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "The live feed's listening session failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let relayed: Relayed = match serde_json::from_str(&payload) {
            Ok(relayed) => relayed,
            Err(error) => {
                tracing::warn!(%error, "A live payload from another replica does not decode");
                counters.live_relay_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if relayed.origin == origin {
            continue;
        }
        let mut events = Vec::with_capacity(relayed.events.len());
        for event in relayed.events {
            let Some(kind) = LiveEvent::kind_named(&event.kind) else {
                counters.live_relay_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            events.push(LiveEvent {
                kind,
                agent_id: event.agent_id,
                region: event.region,
                check_id: event.check_id,
                source: event.source,
                at_ms: event.at_ms,
                data: relayed_data(kind, event.data),
            });
        }
        counters
            .live_relay_received
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if events.iter().any(|event| event.kind == "check") {
            crate::checks::on_relayed_change(state);
        }
        if state.lease.is_leader() {
            // The leader judges what the others committed ([`crate::verdict::judge_worker`]).
            let judged = to_judge(&events);
            if !(judged.results.is_empty() && judged.metrics.is_empty())
                && state.judge_queue.send(judged).await.is_err()
            {
                return;
            }
        }
        hub.publish_relayed(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_events_into_bounded_payloads_that_decode() {
        let event = |n: usize| {
            serde_json::to_string(&LiveEvent {
                kind: "result",
                agent_id: format!("a{n}"),
                region: "eu".into(),
                check_id: Some("web".into()),
                source: None,
                at_ms: 1,
                data: serde_json::json!({ "reason": "x".repeat(n) }).into(),
            })
            .unwrap()
        };
        let events: Vec<String> = [10, 3000, 3000, 3000, 20_000, 5]
            .into_iter()
            .map(event)
            .collect();
        let (payloads, oversize) = pack("0123abcd", &events);
        assert_eq!(oversize, 1, "the 20 kB event fits no payload");
        assert_eq!(
            payloads.iter().map(|(_, n)| n).sum::<u64>(),
            5,
            "every other event is sent once"
        );
        assert!(payloads.len() >= 2);
        let mut agents = Vec::new();
        for (payload, n) in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD_BYTES, "{}", payload.len());
            let relayed: Relayed = serde_json::from_str(payload).unwrap();
            assert_eq!(relayed.origin, "0123abcd");
            assert_eq!(relayed.events.len() as u64, *n);
            agents.extend(relayed.events.into_iter().map(|e| e.agent_id));
        }
        assert_eq!(agents, ["a10", "a3000", "a3000", "a3000", "a5"]);
        assert!(pack("o", &Vec::<String>::new()).0.is_empty());
    }
}
