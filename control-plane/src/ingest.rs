//! Ingest: everything agents publish, from the broker link to the store, acks and fan-out.
//!
//! A reader task takes messages off the ingest link in order, checks that the agent in the
//! topic is enrolled and not revoked, decodes batches row by row (envelope: size, version,
//! strict JSON; then each row on its own), repairs what can be repaired (texts cut to their
//! bound, NUL replaced: [`vantage_mqtt::text`]) and refuses, per row and counted under its own
//! reason, what can never be stored (an undecodable row, an invalid identifier); refused rows
//! that carry a seq are acknowledged so the agent stops resending them. The storable rows go
//! through bounded channels to the committers (several on PostgreSQL, one on SQLite), an
//! agent's to one committer while any of its rows is in flight there. A committer drains what is queued into one batch and
//! commits it in one transaction; then — only after the commit, on the committer's own
//! acknowledging task while its next transaction runs — the batch's `results/ack` with each
//! agent's exact committed seq ranges, the retained check statuses and the live events are
//! published, and the batch goes to judging ([`crate::verdict::judge_worker`]) on a bounded
//! queue. Events that carry a relayed webhook body
//! skip the batch: they go to a task of their own, where each takes its source's webhook
//! path and is acknowledged once stored there. A failed commit acknowledges nothing: agents keep the rows and resend.
//! Hello and status messages update the agents table directly; heartbeats are written in
//! groups (the newest per agent, within 100 ms, one transaction; agents a commit holds wait
//! for the next group), each agent's before its next hello or status; a hello whose
//! `next_seq` is at or below what the store holds means the agent's state was rewound: the
//! store holds the reused seqs back until the agent's next hello (every replica's committer
//! takes such rows out of its batches, unstored and unacknowledged), and the agent is told
//! to number on from past them (`Command::RaiseSeq`). Every recorded hello is then answered
//! on `results/ack`; the agent holds its rows until that answer, so on a broker cluster,
//! where its hello and its rows may reach different replicas, the held range is in the
//! store before any row that needs it is ingested. A certificate signing
//! request (`csr`) goes to [`crate::renew`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use vantage_mqtt::text::Repair;
use vantage_mqtt::{
    AgentAck, AgentTopic, CheckResult, CheckStatusView, Command, CommandMessage, CsrRequest,
    DecodeError, Event, Heartbeat, Hello, HostMetrics, NodeState, NodeStatusView, ResultsAck,
    RowError, Status, Topic, decode, decode_rows, encode, topic,
};

use crate::AppState;
use crate::broker::Subscription;
use crate::hub::{LiveData, LiveEvent};
use crate::store::ingest::IngestBatch;
use crate::store::{LockedAgents, now_ms};

/// The agent id under which the control plane's fallback executor ([`crate::fallback`])
/// stores the results it measures for regions whose online agents cannot take a check (none
/// online, or all full); nobody is acknowledged under it.
pub const FALLBACK_AGENT_ID: &str = "control-plane";

/// Storable rows of one message, on their way to the committer.
enum Rows {
    Results(String, String, Vec<CheckResult>),
    Metrics(String, String, Vec<HostMetrics>),
    Events(String, String, Vec<Event>),
}

/// A row kind as ingest sees it: its seq, its repair, and whether its identifiers can be
/// stored.
trait IngestRow: serde::de::DeserializeOwned {
    fn seq(&self) -> u64;
    fn repair(&mut self) -> Repair;
    fn ids_valid(&self) -> bool;
}

impl IngestRow for CheckResult {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn repair(&mut self) -> Repair {
        self.bound_texts()
    }
    fn ids_valid(&self) -> bool {
        topic::valid_id(&self.check_id)
    }
}

impl IngestRow for HostMetrics {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn repair(&mut self) -> Repair {
        self.bound_texts()
    }
    fn ids_valid(&self) -> bool {
        true
    }
}

impl IngestRow for Event {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn repair(&mut self) -> Repair {
        self.bound_texts()
    }
    fn ids_valid(&self) -> bool {
        topic::valid_id(&self.source)
    }
}

/// Why one row was refused for good.
#[derive(Debug, Clone, Copy)]
enum RowRefusal {
    /// The row is not a valid row of its kind.
    Undecodable,
    /// An identifier in it (check id, event source) breaks the id rules.
    InvalidId,
}

/// Decodes a batch row by row and keeps what can be stored, repaired where needed; counts
/// each refused row and collects the seqs that may be acknowledged as refused.
fn admit<T: IngestRow>(
    state: &AppState,
    agent: &str,
    rows: Vec<Result<T, RowError>>,
    refused_seqs: &mut Vec<u64>,
) -> Vec<T> {
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let (refusal, seq) = match row {
            Ok(row) if !row.ids_valid() => (RowRefusal::InvalidId, Some(row.seq())),
            Ok(mut row) => {
                let repair = row.repair();
                if repair.cut {
                    state
                        .counters
                        .ingest_row_cut
                        .fetch_add(1, Ordering::Relaxed);
                }
                if repair.nul {
                    state
                        .counters
                        .ingest_row_nul
                        .fetch_add(1, Ordering::Relaxed);
                }
                kept.push(row);
                continue;
            }
            Err(error) => {
                tracing::debug!(agent, %error, "Refused an undecodable row");
                (RowRefusal::Undecodable, error.seq)
            }
        };
        let counter = match refusal {
            RowRefusal::Undecodable => &state.counters.ingest_row_undecodable,
            RowRefusal::InvalidId => &state.counters.ingest_row_invalid_id,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        refused_seqs.extend(seq);
    }
    kept
}

/// Publishes `results/ack` for `seqs` to `agent`, counting a failed publish.
async fn publish_ack(state: &AppState, agent: &str, seqs: Vec<u64>) {
    let ack = ResultsAck::from_seqs(seqs);
    if let Err(error) = state
        .publisher
        .publish(
            &topic::agent(agent, AgentTopic::ResultsAck),
            encode(&ack),
            false,
        )
        .await
    {
        state
            .counters
            .ingest_ack_publish_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(agent, %error, "Cannot publish an ack; the agent resends those rows");
    }
}

/// How long a heartbeat may wait to be written with others.
const HEARTBEAT_DELAY: Duration = Duration::from_millis(100);
/// How long a heartbeat may be passed over because an ingest commit holds its agent's row
/// ([`LockedAgents::Skip`]); older, the next write waits for the row.
const HEARTBEAT_MAX_SKIPPED_MS: i64 = 1_000;
/// Most heartbeats written in one transaction (the newest per agent).
const HEARTBEATS_AT_ONCE: usize = 1024;
/// Messages the router's ingest link may hold ahead of the reader
/// ([`Subscription::into_receiver`]); the router's own log holds the rest.
const ROUTER_QUEUE: usize = 64;

/// Heartbeats waiting to be written together ([`crate::store::Store::record_heartbeats`]):
/// the newest per agent, for at most [`HEARTBEAT_DELAY`] and [`HEARTBEATS_AT_ONCE`] agents.
/// One transaction per group instead of one per heartbeat: at 10,000 agents, 1,000
/// heartbeats a second would otherwise each cost a commit and hold up the reader.
///
/// A due group passes over the agents whose rows an ingest commit holds and keeps their
/// heartbeats for the next group: waiting for them held up the reader, and a group waiting
/// behind one committer's agents made the other committers wait behind it (a fifth of
/// ingest's throughput with heartbeats in the mix, BENCHMARKS.md). A heartbeat passed over
/// for [`HEARTBEAT_MAX_SKIPPED_MS`], and every heartbeat written before a hello or status,
/// waits for its row.
#[derive(Default)]
struct PendingHeartbeats {
    /// Per agent: its region, its newest heartbeat and when that was received.
    by_agent: HashMap<String, (String, Heartbeat, i64)>,
    since: Option<tokio::time::Instant>,
}

impl PendingHeartbeats {
    /// When the oldest waiting heartbeat must be written.
    fn due_at(&self) -> Option<tokio::time::Instant> {
        self.since.map(|since| since + HEARTBEAT_DELAY)
    }

    fn holds(&self, agent: &str) -> bool {
        self.by_agent.contains_key(agent)
    }

    /// Keeps `heartbeat` as `agent`'s newest; whether the group is full.
    fn add(&mut self, agent: String, region: String, heartbeat: Heartbeat) -> bool {
        self.since.get_or_insert_with(tokio::time::Instant::now);
        self.by_agent.insert(agent, (region, heartbeat, now_ms()));
        self.by_agent.len() >= HEARTBEATS_AT_ONCE
    }

    /// How the due group meets locked agent rows: it waits once a heartbeat in it was
    /// received [`HEARTBEAT_MAX_SKIPPED_MS`] ago.
    fn due_mode(&self) -> LockedAgents {
        let oldest = now_ms() - HEARTBEAT_MAX_SKIPPED_MS;
        if self
            .by_agent
            .values()
            .any(|(_, _, received)| *received <= oldest)
        {
            LockedAgents::Wait
        } else {
            LockedAgents::Skip
        }
    }

    /// Writes the waiting heartbeats in one transaction and publishes each agent they
    /// brought back online; those passed over ([`LockedAgents::Skip`]) wait for the next
    /// group. A failed write is logged; the agents' next heartbeats (every few seconds)
    /// write the same fields again.
    async fn flush(&mut self, state: &AppState, locked: LockedAgents) {
        self.since = None;
        if self.by_agent.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.by_agent);
        let rows: Vec<(&str, &Heartbeat, i64)> = waiting
            .iter()
            .map(|(agent, (_, heartbeat, received))| (agent.as_str(), heartbeat, *received))
            .collect();
        match state.store.record_heartbeats(&rows, locked).await {
            Ok(recorded) => {
                for agent in recorded.back {
                    if let Some((region, _, _)) = waiting.get(&agent) {
                        publish_status(state, &agent, region, NodeState::Online).await;
                    }
                }
                if !recorded.skipped.is_empty() {
                    state
                        .counters
                        .heartbeats_deferred
                        .fetch_add(recorded.skipped.len() as u64, Ordering::Relaxed);
                    self.since = Some(tokio::time::Instant::now());
                }
                for agent in recorded.skipped {
                    if let Some(heartbeat) = waiting.remove(&agent) {
                        self.by_agent.insert(agent, heartbeat);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(n_agents = rows.len(), %error, "Cannot record heartbeats")
            }
        }
    }
}

/// Runs ingest until the broker link closes.
pub async fn run(state: AppState, subscription: Subscription) {
    let (relays, relayed) = mpsc::channel::<(String, Event)>(RELAY_QUEUE);
    let relayer = tokio::spawn(relay_loop(state.clone(), relayed));
    let n_committers = committers(&state);
    let mut senders = Vec::with_capacity(n_committers);
    let mut committers = Vec::with_capacity(n_committers);
    for _ in 0..n_committers {
        let (sender, receiver) = mpsc::channel::<Routed>(COMMITTER_QUEUE / n_committers);
        senders.push((sender, Arc::new(AtomicUsize::new(0))));
        committers.push(tokio::spawn(commit_loop(
            state.clone(),
            receiver,
            relays.clone(),
        )));
    }
    drop(relays);
    let mut regions: HashMap<String, String> = HashMap::new();
    let mut routes = Routes::default();
    let mut messages = subscription.into_receiver(ROUTER_QUEUE);
    let mut heartbeats = PendingHeartbeats::default();
    loop {
        // Heartbeats are written when due even while messages keep coming.
        if heartbeats
            .due_at()
            .is_some_and(|due| due <= tokio::time::Instant::now())
        {
            let mode = heartbeats.due_mode();
            heartbeats.flush(&state, mode).await;
        }
        let next = match heartbeats.due_at() {
            None => messages.recv().await,
            // `recv` loses nothing when the deadline cancels it.
            Some(due) => match tokio::time::timeout_at(due, messages.recv()).await {
                Ok(next) => next,
                Err(_) => continue,
            },
        };
        let Some(message) = next else {
            break;
        };
        let Ok(Topic::Agent { id, kind }) = Topic::parse(&message.topic) else {
            state
                .counters
                .ingest_bad_topic
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic = %message.topic, "Dropped a message on an unparseable topic");
            continue;
        };
        if !kind.is_agent_published() {
            // Ingest subscribes only to agent-published kinds; anything else is not ours.
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
        // A hello or status is recorded after the agent's waiting heartbeat, in the order
        // they came (a heartbeat written after a later offline status would mark the agent
        // online again).
        if matches!(kind, AgentTopic::Hello | AgentTopic::Status) && heartbeats.holds(&id) {
            heartbeats.flush(&state, LockedAgents::Wait).await;
        }
        let mut refused_seqs = Vec::new();
        let outcome = match kind {
            AgentTopic::Results => decode_rows::<CheckResult>(&message.payload).map(|rows| {
                let rows = admit(&state, &id, rows, &mut refused_seqs);
                Some(Rows::Results(id.clone(), region.clone(), rows))
            }),
            AgentTopic::Metrics => decode_rows::<HostMetrics>(&message.payload).map(|rows| {
                let rows = admit(&state, &id, rows, &mut refused_seqs);
                Some(Rows::Metrics(id.clone(), region.clone(), rows))
            }),
            AgentTopic::Events => decode_rows::<Event>(&message.payload).map(|rows| {
                let rows = admit(&state, &id, rows, &mut refused_seqs);
                Some(Rows::Events(id.clone(), region.clone(), rows))
            }),
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
                    // A full group (a thousand agents' heartbeats within the delay) is rare;
                    // it waits, so passed-over heartbeats cannot keep it full.
                    if heartbeats.add(id.clone(), region.clone(), heartbeat) {
                        heartbeats.flush(&state, LockedAgents::Wait).await;
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
            AgentTopic::Csr => match decode::<CsrRequest>(&message.payload) {
                Ok(request) => {
                    crate::renew::on_csr(&state, &id, request).await;
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            AgentTopic::Config | AgentTopic::Cmd | AgentTopic::ResultsAck => Ok(None),
        };
        if !refused_seqs.is_empty() {
            // Refused for good: acknowledge them so the agent stops resending them.
            tracing::warn!(agent = %id, ?kind, n_rows = refused_seqs.len(), "Refused rows that can never be stored");
            publish_ack(&state, &id, refused_seqs).await;
        }
        match outcome {
            Ok(Some(rows)) => {
                if rows.is_empty() {
                    continue;
                }
                let (committer, agent_rows) = routes.route(&id, &senders);
                let (sender, committer_rows) = &senders[committer];
                let ticket = Ticket::new(rows.len(), agent_rows, committer_rows.clone());
                if sender.send(Routed { rows, ticket }).await.is_err() {
                    break;
                }
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
    heartbeats.flush(&state, LockedAgents::Wait).await;
    drop(senders);
    for committer in committers {
        let _ = committer.await;
    }
    let _ = relayer.await;
}

/// Messages of rows on their way to the committers, in all (each has its share).
const COMMITTER_QUEUE: usize = 4096;

/// How many committers ingest runs: [`crate::settings::Settings::ingest_committers`] on
/// PostgreSQL; one on SQLite, whose single writer would only make them take turns.
fn committers(state: &AppState) -> usize {
    match state.store {
        crate::store::Store::Postgres(_) => {
            usize::from(state.settings.ingest_committers.clamp(1, 8))
        }
        crate::store::Store::Sqlite(_) => 1,
    }
}

/// Rows on their way to a committer, with the [`Ticket`] that counts them until committed.
struct Routed {
    rows: Rows,
    ticket: Ticket,
}

/// Counts a message's rows as in flight, for their agent and for their committer, from the
/// reader's hand-off until the committer has acknowledged and fanned them out, or given up
/// on them (dropped then).
struct Ticket {
    rows: usize,
    agent: Arc<AtomicUsize>,
    committer: Arc<AtomicUsize>,
}

impl Ticket {
    fn new(rows: usize, agent: Arc<AtomicUsize>, committer: Arc<AtomicUsize>) -> Ticket {
        agent.fetch_add(rows, Ordering::Relaxed);
        committer.fetch_add(rows, Ordering::Relaxed);
        Ticket {
            rows,
            agent,
            committer,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Release, read with Acquire in [`Routes::route`]: what the old committer did for
        // these rows happens before the agent's next rows go to another.
        self.agent.fetch_sub(self.rows, Ordering::Release);
        self.committer.fetch_sub(self.rows, Ordering::Relaxed);
    }
}

/// Which committer takes each agent's rows. An agent with rows in flight stays with its
/// committer, so its rows and their resends are committed, acknowledged, fanned out and
/// judged in order, and two committers' transactions do not wait on the same agent's row
/// (with replicas, two replicas' still may: the row lock orders them); an agent with none goes to the
/// committer with the fewest rows in flight. (A fixed hash of the agent id left one of three
/// committers with up to twice the agents of another, and the run waited on it.) One entry
/// per enrolled agent that sent rows, as the region cache.
#[derive(Default)]
struct Routes {
    by_agent: HashMap<String, (usize, Arc<AtomicUsize>)>,
}

impl Routes {
    /// The committer (an index into `committers`) for `agent`'s next rows, and the agent's
    /// count of rows in flight for their [`Ticket`].
    fn route<S>(
        &mut self,
        agent: &str,
        committers: &[(S, Arc<AtomicUsize>)],
    ) -> (usize, Arc<AtomicUsize>) {
        let least_loaded = || {
            (0..committers.len())
                .min_by_key(|i| committers[*i].1.load(Ordering::Relaxed))
                .unwrap_or(0)
        };
        match self.by_agent.get_mut(agent) {
            Some((committer, in_flight)) => {
                if in_flight.load(Ordering::Acquire) == 0 {
                    *committer = least_loaded();
                }
                (*committer, in_flight.clone())
            }
            None => {
                let committer = least_loaded();
                let in_flight = Arc::<AtomicUsize>::default();
                self.by_agent
                    .insert(agent.to_owned(), (committer, in_flight.clone()));
                (committer, in_flight)
            }
        }
    }

    /// `agent`'s count of rows in flight (after [`Routes::route`]).
    #[cfg(test)]
    fn in_flight(&self, agent: &str) -> Arc<AtomicUsize> {
        self.by_agent
            .get(agent)
            .map(|(_, in_flight)| in_flight.clone())
            .unwrap_or_default()
    }
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Results(_, _, rows) => rows.len(),
            Rows::Metrics(_, _, rows) => rows.len(),
            Rows::Events(_, _, rows) => rows.len(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Rows::Results(_, _, rows) => rows.is_empty(),
            Rows::Metrics(_, _, rows) => rows.is_empty(),
            Rows::Events(_, _, rows) => rows.is_empty(),
        }
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

/// Records a hello, then tells the live feed. When the hello shows a rewound state (its
/// `next_seq` at or below what the store holds), the store holds the reused seqs back
/// ([`crate::store::Store::held_seqs`]) and the agent is told to number on past them. Then
/// the hello is answered ([`ResultsAck::hello_answer`]): the agent sends rows only after it.
/// A hello that cannot be recorded is not answered; the agent says it again.
async fn on_hello(state: &AppState, id: &str, region: &str, mut hello: Hello) {
    if hello.bound_texts().any() {
        state
            .counters
            .ingest_row_cut
            .fetch_add(1, Ordering::Relaxed);
    }
    let recorded = match state.store.record_hello(id, &hello).await {
        Ok(Some(recorded)) => recorded,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(agent = %id, %error, "Cannot record hello");
            return;
        }
    };
    tracing::info!(agent = %id, version = %hello.version, arch = %hello.arch, "Agent said hello");
    state.hub.publish(LiveEvent {
        kind: "hello",
        agent_id: id.to_owned(),
        region: region.to_owned(),
        check_id: None,
        source: None,
        at_ms: now_ms(),
        data: serde_json::to_value(&hello).unwrap_or_default().into(),
    });
    if let Some((from, to)) = recorded.held {
        raise_seq(state, id, hello.next_seq, from, to).await;
    }
    // The hello, and any range it holds back, is in the store: the agent may send rows.
    if let Err(error) = state
        .publisher
        .publish(
            &topic::agent(id, AgentTopic::ResultsAck),
            encode(&ResultsAck::hello_answer(hello.next_seq)),
            false,
        )
        .await
    {
        tracing::warn!(agent = %id, %error, "Cannot answer a hello; the agent says it again");
    }
}

/// Tells an agent whose hello announced `next_seq` at or below the highest seq the store
/// holds (`to`) to number on past the stored rows: its state was rewound, and its rows in the
/// held range `from..=to` wait until it renumbers them.
async fn raise_seq(state: &AppState, id: &str, next_seq: u64, from: u64, to: u64) {
    state
        .counters
        .ingest_seq_rewound
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        agent = %id,
        agent_next_seq = next_seq,
        held_from = from,
        stored_seq = to,
        "Agent's seq went backwards (state restored or lost writes); telling it to number on from past the stored rows"
    );
    let command = CommandMessage {
        v: vantage_mqtt::PROTOCOL_VERSION,
        request_id: format!("raise-seq-{}", to + 1),
        command: Command::RaiseSeq {
            from,
            next_seq: to + 1,
        },
    };
    if let Err(error) = state
        .publisher
        .publish(&topic::agent(id, AgentTopic::Cmd), encode(&command), false)
        .await
    {
        tracing::warn!(agent = %id, %error, "Cannot publish the seq command");
    }
}

/// Records a connection state change, publishes it and reassigns checks.
pub async fn on_status(state: &AppState, id: &str, region: &str, node_state: NodeState) {
    match state.store.set_agent_state(id, node_state).await {
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
    tracing::info!(agent = %id, state = node_state.as_str(), "Agent state changed");
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
        source: None,
        at_ms: view.at_ms,
        data: serde_json::to_value(&view).unwrap_or_default().into(),
    });
    state.reassign.notify_one();
}

/// Takes rows off its queue into batches of up to `ingest_batch_rows` and commits one at a
/// time; each committed batch goes to its own [`after_commit_loop`], in order, so acks and
/// fan-out of one batch run while the next commits.
async fn commit_loop(
    state: AppState,
    mut receiver: mpsc::Receiver<Routed>,
    relays: mpsc::Sender<(String, Event)>,
) {
    let max_rows = state.settings.ingest_batch_rows.max(1);
    let mut pending: Vec<Routed> = Vec::new();
    // One committed batch waits while the one before it is acknowledged and fanned out.
    let (committed, to_acknowledge) = mpsc::channel::<(IngestBatch, Vec<Ticket>)>(1);
    let acknowledger = tokio::spawn(after_commit_loop(state.clone(), to_acknowledge));
    'batches: loop {
        if pending.is_empty() {
            if receiver.recv_many(&mut pending, 1024).await == 0 {
                break 'batches;
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
        // Webhook bodies agents relayed: they take their source's webhook path, not the batch.
        let mut relayed: Vec<(String, Event)> = Vec::new();
        // The tickets of the rows taken into this round (see below for when they go).
        let mut tickets = Vec::new();
        for routed in pending.drain(..) {
            if batch.len() >= max_rows {
                rest.push(routed);
                continue;
            }
            let Routed { rows, ticket } = routed;
            tickets.push(ticket);
            match rows {
                Rows::Results(agent, region, b) => batch
                    .results
                    .extend(b.into_iter().map(|r| (agent.clone(), region.clone(), r))),
                Rows::Metrics(agent, region, b) => batch
                    .metrics
                    .extend(b.into_iter().map(|m| (agent.clone(), region.clone(), m))),
                Rows::Events(agent, region, b) => {
                    for event in b {
                        if event.relayed.is_some() {
                            relayed.push((agent.clone(), event));
                        } else {
                            batch.events.push((agent.clone(), region.clone(), event));
                        }
                    }
                }
            }
        }
        pending = rest;
        // Whatever did not fit stays in `pending` for the next round.
        let committed_batch = if batch.is_empty() {
            None
        } else {
            commit(&state, batch).await
        };
        // To their own task (bounded: a flood of them holds this loop up, never memory),
        // before the tickets go: an agent's relayed bodies reach it in order.
        for row in relayed {
            if relays.send(row).await.is_err() {
                break 'batches;
            }
        }
        // The tickets go with the batch and are dropped once it is acknowledged and fanned
        // out: until then its agents' next rows stay here, so an agent's acks, statuses,
        // live rows and judging keep the order of its rows.
        match committed_batch {
            Some(batch) => {
                if committed.send((batch, tickets)).await.is_err() {
                    break 'batches;
                }
            }
            None => drop(tickets),
        }
    }
    drop(committed);
    let _ = acknowledger.await;
}

/// Acknowledges and fans out committed batches in the order they were committed, then lets
/// their agents move ([`Ticket`]).
async fn after_commit_loop(
    state: AppState,
    mut committed: mpsc::Receiver<(IngestBatch, Vec<Ticket>)>,
) {
    while let Some((batch, tickets)) = committed.recv().await {
        after_commit(&state, batch).await;
        drop(tickets);
    }
}

/// Relayed bodies waiting for [`relay_loop`].
const RELAY_QUEUE: usize = 1024;
/// Relayed bodies taken at once (they share the event writer's group commits).
const RELAYS_AT_ONCE: usize = 16;

/// Takes relayed webhook bodies off their queue, up to [`RELAYS_AT_ONCE`] at a time, so they
/// never hold up the commits and acks of results and metrics.
async fn relay_loop(state: AppState, mut relayed: mpsc::Receiver<(String, Event)>) {
    let mut taken = Vec::with_capacity(64);
    while relayed.recv_many(&mut taken, 64).await > 0 {
        take_relayed(&state, std::mem::take(&mut taken)).await;
    }
}

/// Takes each relayed webhook body through its source's webhook path
/// ([`crate::integrations::accept_relayed`]: the agent's signature checked, the rows
/// deduplicated, stored and published), then acknowledges the bodies taken or refused for
/// good. A body that met a store error is not acknowledged: the agent sends it again, and
/// the rows stored before the error are then found as duplicates.
async fn take_relayed(state: &AppState, rows: Vec<(String, Event)>) {
    use futures_util::StreamExt;
    let outcomes: Vec<(String, u64, bool)> = futures_util::stream::iter(rows)
        .map(|(agent, event)| async move {
            let acked = take_one_relayed(state, &agent, &event).await;
            (agent, event.seq, acked)
        })
        .buffer_unordered(RELAYS_AT_ONCE)
        .collect()
        .await;
    let mut acks: HashMap<String, Vec<u64>> = HashMap::new();
    for (agent, seq, acked) in outcomes {
        if acked {
            acks.entry(agent).or_default().push(seq);
        }
    }
    for (agent, seqs) in acks {
        publish_ack(state, &agent, seqs).await;
    }
}

/// Takes one relayed body; whether it may be acknowledged (taken, or refused for good).
async fn take_one_relayed(state: &AppState, agent: &str, event: &Event) -> bool {
    use crate::integrations::IntegrationError;
    let Some(body) = &event.relayed else {
        return false;
    };
    let counter = match crate::integrations::accept_relayed(state, &event.source, body).await {
        Ok(_) => &state.counters.events_relayed,
        Err(IntegrationError::Store(error)) => {
            tracing::warn!(%agent, source = %event.source, %error, "Cannot store a relayed webhook body; the agent sends it again");
            state
                .counters
                .events_relayed_retry
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Err(
            error @ (IntegrationError::Unauthorized
            | IntegrationError::Malformed(_)
            | IntegrationError::TooLarge(_)
            | IntegrationError::Invalid(_)
            | IntegrationError::NotFound(_)),
        ) => {
            crate::integrations::count_refusal(state, &error);
            tracing::warn!(%agent, source = %event.source, %error, "Refused a relayed webhook body");
            &state.counters.events_relayed_refused
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
    true
}

/// Commits a batch (retrying five times), then acknowledges and fans it out.
pub(crate) async fn commit_with_retry(state: &AppState, batch: IngestBatch) {
    if let Some(batch) = commit(state, batch).await {
        after_commit(state, batch).await;
    }
}

/// Commits a batch, retrying five times; the batch as committed (without the rows held
/// back), or `None` when nothing of it was committed.
async fn commit(state: &AppState, mut batch: IngestBatch) -> Option<IngestBatch> {
    // A resend sharing the batch with its first send is stored and counted once (its seq is
    // still acknowledged).
    batch.dedup();
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=5 {
        // Rows in the seq range a rewound agent reused wait for their renumbered copies.
        // The range is read from the store, whichever replica took the agent's hello.
        let committed = match state.store.held_seqs().await {
            Ok(held) => {
                let n_held = batch.hold(&held);
                if n_held > 0 {
                    state
                        .counters
                        .ingest_row_seq_rewound
                        .fetch_add(n_held as u64, Ordering::Relaxed);
                }
                if batch.is_empty() {
                    return None;
                }
                state.store.commit_batch(&batch, &state.keys).await
            }
            Err(error) => Err(error),
        };
        match committed {
            Ok(()) => return Some(batch),
            Err(error) => {
                // The store may not be where the remembered keys say (a failover, a restore).
                state.keys.clear();
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
    state
        .counters
        .ingest_batches_given_up
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        rows = batch.len(),
        "Ingest batch not committed; agents keep the rows and resend"
    );
    None
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
        if agent != FALLBACK_AGENT_ID {
            publish_ack(state, &agent, seqs).await;
        }
    }

    let now = now_ms();
    // Retained status and `/metrics/checks`' phases: only the newest result per (check,
    // region) of this batch, the statuses handed to the broker together.
    let latest = crate::store::ingest::latest_per_check_region(&batch);
    for (_, region, result) in &latest {
        state.latest.observe(region, result);
    }
    let statuses: Vec<(String, Vec<u8>, bool)> = latest
        .into_iter()
        .map(|(agent, region, result)| {
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
            (
                topic::status_check_region(&result.check_id, region),
                encode(&view),
                true,
            )
        })
        .collect();
    let _ = state.publisher.publish_many(statuses).await;
    // Live events for every row, always: the hub keeps the latest per key for clients that
    // connect later.
    publish_live(state, &batch, now);
    // Then judging, on its own task: the next commit does not wait for it. The queue is
    // bounded; when judging falls behind, ingest waits here (results are never skipped).
    let IngestBatch {
        results, metrics, ..
    } = batch;
    if results.is_empty() && metrics.is_empty() {
        return;
    }
    let judged = crate::verdict::Judged { results, metrics };
    let sent = match state.judge_queue.try_send(judged) {
        Ok(()) => Ok(()),
        Err(tokio::sync::mpsc::error::TrySendError::Full(judged)) => {
            // Judging is behind by a whole queue: ingest waits, and says so.
            state
                .counters
                .judge_queue_full
                .fetch_add(1, Ordering::Relaxed);
            state.judge_queue.send(judged).await.map_err(|_| ())
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(()),
    };
    if sent.is_err() {
        tracing::warn!("The judging task is gone; results are stored but not judged");
    }
}

/// Publishes every row of a committed batch on the live feed, as one message.
fn publish_live(state: &AppState, batch: &IngestBatch, now: i64) {
    let mut events =
        Vec::with_capacity(batch.results.len() + batch.metrics.len() + batch.events.len());
    for (agent, region, result) in &batch.results {
        events.push(LiveEvent {
            kind: "result",
            agent_id: agent.clone(),
            region: region.clone(),
            check_id: Some(result.check_id.clone()),
            source: None,
            at_ms: now,
            data: LiveData::Result(Box::new(result.clone())),
        });
    }
    for (agent, region, metrics) in &batch.metrics {
        events.push(LiveEvent {
            kind: "metrics",
            agent_id: agent.clone(),
            region: region.clone(),
            check_id: None,
            source: None,
            at_ms: now,
            data: LiveData::Metrics(Box::new(metrics.clone())),
        });
    }
    for (agent, region, event) in &batch.events {
        events.push(LiveEvent {
            kind: "event",
            agent_id: agent.clone(),
            region: region.clone(),
            check_id: None,
            source: Some(event.source.clone()),
            at_ms: now,
            data: LiveData::Event(Box::new(event.clone())),
        });
    }
    state.hub.publish_many(events);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committers(n: usize) -> Vec<((), Arc<AtomicUsize>)> {
        (0..n).map(|_| ((), Arc::default())).collect()
    }

    /// Agents arriving together spread evenly; an agent with rows in flight stays with its
    /// committer however loaded it is, and moves to the least loaded once they are done
    /// (committed, acknowledged and fanned out: their tickets dropped).
    #[test]
    fn agents_stay_with_their_committer_while_rows_are_in_flight() {
        let committers = committers(3);
        let mut routes = Routes::default();
        let mut tickets = Vec::new();
        let mut per_committer = [0usize; 3];
        for n in 0..50 {
            let agent = format!("ag-{n}");
            let (committer, agent_rows) = routes.route(&agent, &committers);
            per_committer[committer] += 1;
            tickets.push(Ticket::new(
                100,
                agent_rows,
                committers[committer].1.clone(),
            ));
        }
        assert_eq!(per_committer, [17, 17, 16]);
        assert_eq!(committers[0].1.load(Ordering::Relaxed), 1_700);

        // ag-0 (on committer 0) has rows in flight: it stays, though 0 is now the busiest.
        let extra = Ticket::new(500, routes.in_flight("ag-0"), committers[0].1.clone());
        assert_eq!(routes.route("ag-0", &committers).0, 0);
        // Once its rows are committed, it goes where the fewest rows wait.
        drop(extra);
        drop(tickets.remove(0));
        assert_eq!(routes.in_flight("ag-0").load(Ordering::Relaxed), 0);
        assert_eq!(committers[0].1.load(Ordering::Relaxed), 1_600);
        assert_eq!(routes.route("ag-0", &committers).0, 0);
        drop(tickets.remove(0)); // ag-1, committer 1
        drop(tickets.remove(0)); // ag-2, committer 2
        drop(tickets.remove(0)); // ag-3, committer 0
        drop(tickets.remove(0)); // ag-4, committer 1
        assert_eq!(
            committers
                .iter()
                .map(|c| c.1.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            [1_500, 1_500, 1_500]
        );
        drop(tickets.remove(0)); // ag-5, committer 2
        drop(tickets.remove(0)); // ag-6, committer 0
        assert_eq!(routes.route("ag-0", &committers).0, 0);
        drop(tickets.remove(0)); // ag-7, committer 1
        assert_eq!(routes.route("ag-1", &committers).0, 0);
    }
}
