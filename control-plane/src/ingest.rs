//! Ingest: everything agents publish, from the broker link to the store, acks and fan-out.
//!
//! A reader task takes messages off the ingest link in order, decodes them (size, version,
//! strict JSON), checks that the agent in the topic is enrolled and not revoked, and hands
//! rows to a committer task through a bounded channel. The committer drains what is queued
//! into one batch, commits it in one transaction, then — only after the commit — publishes
//! `results/ack` with each agent's highest committed seq, the retained check statuses, and
//! the live events. A failed commit acknowledges nothing: agents keep the rows and resend.
//! Hello, status and heartbeat messages update the agents table directly.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use vantage_mqtt::{
    AgentAck, AgentTopic, CheckStatusView, DecodeError, EventsBatch, Heartbeat, Hello,
    MetricsBatch, NodeState, NodeStatusView, ResultsAck, ResultsBatch, Status, Topic, decode,
    encode, topic,
};

use crate::AppState;
use crate::broker::Subscription;
use crate::hub::LiveEvent;
use crate::store::ingest::IngestBatch;
use crate::store::now_ms;

/// Rows of one message, on their way to the committer.
enum Rows {
    Results(String, String, ResultsBatch),
    Metrics(String, String, MetricsBatch),
    Events(String, String, EventsBatch),
}

/// Runs ingest until the broker link closes.
pub async fn run(state: AppState, mut subscription: Subscription) {
    let (sender, receiver) = mpsc::channel::<Rows>(4096);
    let committer = tokio::spawn(commit_loop(state.clone(), receiver));
    let mut regions: HashMap<String, String> = HashMap::new();
    while let Some(message) = subscription.next().await {
        let Ok(Topic::Agent { id, kind }) = Topic::parse(&message.topic) else {
            continue;
        };
        if !kind.is_agent_published() {
            // Our own config and cmd publishes come back on the wildcard subscription.
            continue;
        }
        state
            .counters
            .ingest_messages
            .fetch_add(1, Ordering::Relaxed);
        if message.payload.is_empty() && kind == AgentTopic::Status {
            continue;
        }
        let Some(region) = region_of(&state, &mut regions, &id).await else {
            state
                .counters
                .ingest_unknown_agent
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let outcome = match kind {
            AgentTopic::Results => decode::<ResultsBatch>(&message.payload)
                .map(|b| Some(Rows::Results(id.clone(), region.clone(), b))),
            AgentTopic::Metrics => decode::<MetricsBatch>(&message.payload)
                .map(|b| Some(Rows::Metrics(id.clone(), region.clone(), b))),
            AgentTopic::Events => decode::<EventsBatch>(&message.payload)
                .map(|b| Some(Rows::Events(id.clone(), region.clone(), b))),
            AgentTopic::Hello => match decode::<Hello>(&message.payload) {
                Ok(hello) => {
                    on_hello(&state, &id, &region, hello).await;
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            AgentTopic::Status => match decode::<Status>(&message.payload) {
                Ok(status) => {
                    on_status(&state, &id, &region, status.state).await;
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            AgentTopic::Heartbeat => match decode::<Heartbeat>(&message.payload) {
                Ok(heartbeat) => {
                    match state.store.record_heartbeat(&id, &heartbeat).await {
                        Ok(true) => publish_status(&state, &id, &region, NodeState::Online).await,
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(agent = %id, %error, "Cannot record heartbeat")
                        }
                    }
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            AgentTopic::Ack => match decode::<AgentAck>(&message.payload) {
                Ok(ack) => {
                    if ack.request_id.is_some() && !state.pending.complete(ack) {
                        tracing::debug!(agent = %id, "Answer to a request nobody waits for");
                    }
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            AgentTopic::Config | AgentTopic::Cmd | AgentTopic::ResultsAck => Ok(None),
        };
        match outcome {
            Ok(Some(rows)) if valid_rows(&rows) => {
                if sender.send(rows).await.is_err() {
                    break;
                }
            }
            Ok(Some(rows)) => {
                // Decodable but unstorable (bad identifiers, NUL characters): refused for
                // good. Acknowledge the seqs so the agent stops resending them.
                state
                    .counters
                    .ingest_malformed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(agent = %id, ?kind, "Refused rows with invalid strings");
                let ack = ResultsAck::from_seqs(row_seqs(&rows));
                let _ = state
                    .publisher
                    .publish(
                        &topic::agent(&id, AgentTopic::ResultsAck),
                        encode(&ack),
                        false,
                    )
                    .await;
            }
            Ok(None) => {}
            Err(error) => {
                let counter = match error {
                    DecodeError::TooLarge { .. } => &state.counters.ingest_oversize,
                    DecodeError::UnsupportedVersion { .. } | DecodeError::MissingVersion => {
                        &state.counters.ingest_bad_version
                    }
                    DecodeError::Invalid { .. } => &state.counters.ingest_malformed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(agent = %id, ?kind, %error, "Dropped an agent message");
            }
        }
    }
    drop(sender);
    let _ = committer.await;
}

/// Whether a text can be stored on both backends (PostgreSQL refuses NUL in text).
fn storable(text: &str) -> bool {
    !text.contains('\0') && text.len() <= 4096
}

fn valid_rows(rows: &Rows) -> bool {
    match rows {
        Rows::Results(_, _, batch) => batch
            .items
            .iter()
            .all(|r| topic::valid_id(&r.check_id) && storable(&r.reason)),
        Rows::Metrics(_, _, batch) => batch.items.iter().all(|m| {
            m.disks.iter().all(|d| storable(&d.mount)) && m.nets.iter().all(|n| storable(&n.iface))
        }),
        Rows::Events(_, _, batch) => batch
            .items
            .iter()
            .all(|e| topic::valid_id(&e.source) && storable(&e.severity) && storable(&e.message)),
    }
}

fn row_seqs(rows: &Rows) -> Vec<u64> {
    match rows {
        Rows::Results(_, _, b) => b.items.iter().map(|r| r.seq).collect(),
        Rows::Metrics(_, _, b) => b.items.iter().map(|m| m.seq).collect(),
        Rows::Events(_, _, b) => b.items.iter().map(|e| e.seq).collect(),
    }
}

/// The region of an enrolled, unrevoked agent, cached.
async fn region_of(
    state: &AppState,
    cache: &mut HashMap<String, String>,
    id: &str,
) -> Option<String> {
    if let Some(region) = cache.get(id) {
        return Some(region.clone());
    }
    match state.store.get_agent(id).await {
        Ok(Some(agent)) if agent.revoked_at_ms.is_none() => {
            cache.insert(id.to_owned(), agent.region.clone());
            Some(agent.region)
        }
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(agent = %id, %error, "Cannot look up agent");
            None
        }
    }
}

async fn on_hello(state: &AppState, id: &str, region: &str, hello: Hello) {
    if let Err(error) = state.store.record_hello(id, &hello).await {
        tracing::warn!(agent = %id, %error, "Cannot record hello");
    }
    tracing::info!(agent = %id, version = %hello.version, arch = %hello.arch, "Agent said hello");
    state.hub.publish(LiveEvent {
        kind: "hello",
        agent_id: id.to_owned(),
        region: region.to_owned(),
        check_id: None,
        at_ms: now_ms(),
        data: serde_json::to_value(&hello).unwrap_or_default(),
    });
}

/// Records a connection state change, publishes it and reassigns checks.
pub async fn on_status(state: &AppState, id: &str, region: &str, node_state: NodeState) {
    let text = match node_state {
        NodeState::Online => "online",
        NodeState::Offline => "offline",
    };
    match state.store.set_agent_state(id, text).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::warn!(agent = %id, %error, "Cannot record agent state");
            return;
        }
    }
    publish_status(state, id, region, node_state).await;
}

/// Publishes a connection state the store already holds: retained topic, live feed, and a
/// reassignment.
pub async fn publish_status(state: &AppState, id: &str, region: &str, node_state: NodeState) {
    let text = match node_state {
        NodeState::Online => "online",
        NodeState::Offline => "offline",
    };
    tracing::info!(agent = %id, state = text, "Agent state changed");
    let view = NodeStatusView {
        v: vantage_mqtt::PROTOCOL_VERSION,
        agent_id: id.to_owned(),
        region: region.to_owned(),
        state: node_state,
        at_ms: now_ms(),
    };
    let _ = state
        .publisher
        .publish(&topic::status_node(id), encode(&view), true)
        .await;
    state.hub.publish(LiveEvent {
        kind: "status",
        agent_id: id.to_owned(),
        region: region.to_owned(),
        check_id: None,
        at_ms: view.at_ms,
        data: serde_json::to_value(&view).unwrap_or_default(),
    });
    state.reassign.notify_one();
}

async fn commit_loop(state: AppState, mut receiver: mpsc::Receiver<Rows>) {
    let max_rows = state.settings.ingest_batch_rows.max(1);
    let mut pending: Vec<Rows> = Vec::new();
    loop {
        if pending.is_empty() {
            if receiver.recv_many(&mut pending, 1024).await == 0 {
                return;
            }
        } else {
            while pending.len() < 1024 {
                match receiver.try_recv() {
                    Ok(rows) => pending.push(rows),
                    Err(_) => break,
                }
            }
        }
        let mut batch = IngestBatch {
            received_at_ms: now_ms(),
            ..IngestBatch::default()
        };
        let mut rest = Vec::new();
        for rows in pending.drain(..) {
            if batch.len() >= max_rows {
                rest.push(rows);
                continue;
            }
            match rows {
                Rows::Results(agent, region, b) => batch.results.extend(
                    b.items
                        .into_iter()
                        .map(|r| (agent.clone(), region.clone(), r)),
                ),
                Rows::Metrics(agent, region, b) => batch.metrics.extend(
                    b.items
                        .into_iter()
                        .map(|m| (agent.clone(), region.clone(), m)),
                ),
                Rows::Events(agent, region, b) => batch.events.extend(
                    b.items
                        .into_iter()
                        .map(|e| (agent.clone(), region.clone(), e)),
                ),
            }
        }
        pending = rest;
        // Whatever did not fit stays in `pending` for the next round.
        if batch.is_empty() {
            continue;
        }
        commit_with_retry(&state, batch).await;
    }
}

async fn commit_with_retry(state: &AppState, batch: IngestBatch) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=5 {
        match state.store.commit_batch(&batch).await {
            Ok(()) => {
                after_commit(state, batch).await;
                return;
            }
            Err(error) => {
                state
                    .counters
                    .ingest_commit_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, attempt, rows = batch.len(), "Ingest commit failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    // Nothing of this batch is acknowledged (acks are exact), so the agents keep these rows
    // and send them again.
    tracing::error!(
        rows = batch.len(),
        "Ingest batch not committed; agents keep the rows and resend"
    );
}

async fn after_commit(state: &AppState, batch: IngestBatch) {
    state
        .counters
        .ingest_rows_committed
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    state
        .counters
        .ingest_batches
        .fetch_add(1, Ordering::Relaxed);
    for (agent, seqs) in batch.seqs_per_agent() {
        let ack = ResultsAck::from_seqs(seqs);
        let _ = state
            .publisher
            .publish(
                &topic::agent(&agent, AgentTopic::ResultsAck),
                encode(&ack),
                false,
            )
            .await;
    }
    let now = now_ms();
    // Retained status: only the newest result per (check, region) of this batch.
    for (agent, region, result) in crate::store::ingest::latest_per_check_region(&batch) {
        let view = CheckStatusView {
            v: vantage_mqtt::PROTOCOL_VERSION,
            check_id: result.check_id.clone(),
            region: region.clone(),
            agent_id: agent.clone(),
            ok: result.ok,
            reason: result.reason.clone(),
            total_ms: result.timings.total_ms,
            measured_at_ms: result.measured_at_ms,
        };
        let _ = state
            .publisher
            .publish(
                &topic::status_check_region(&result.check_id, region),
                encode(&view),
                true,
            )
            .await;
    }
    // Live events for every row, built only when someone listens.
    if state.hub.n_subscribers() == 0 {
        return;
    }
    for (agent, region, result) in &batch.results {
        state.hub.publish(LiveEvent {
            kind: "result",
            agent_id: agent.clone(),
            region: region.clone(),
            check_id: Some(result.check_id.clone()),
            at_ms: now,
            data: serde_json::to_value(result).unwrap_or_default(),
        });
    }
    for (agent, region, metrics) in &batch.metrics {
        state.hub.publish(LiveEvent {
            kind: "metrics",
            agent_id: agent.clone(),
            region: region.clone(),
            check_id: None,
            at_ms: now,
            data: serde_json::to_value(metrics).unwrap_or_default(),
        });
    }
    for (agent, region, event) in &batch.events {
        state.hub.publish(LiveEvent {
            kind: "event",
            agent_id: agent.clone(),
            region: region.clone(),
            check_id: None,
            at_ms: now,
            data: serde_json::to_value(event).unwrap_or_default(),
        });
    }
}
