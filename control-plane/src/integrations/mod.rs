//! Integration sources and the events they send: who may send (a source and its secret),
//! what a sender's body means ([`zabbix`], [`chain`]), and the one path every accepted event
//! takes: stored (deduplicated, paired with its problem or resolution, its host mapped to an
//! agent or kept as an external node, its incident opened or resolved, in one transaction),
//! then published on the live feed (`kind=event`, `source=…`) and on MQTT `events/{source}`.
//!
//! It knows nothing of HTTP: the API hands it the credentials it found and the body.
//! Each row of a body is stored or refused on its own: one bad transaction in a batch of a
//! hundred refuses that one, counted, and the rest are stored.

pub mod chain;
pub mod poller;
pub mod zabbix;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio::sync::{Mutex, mpsc, oneshot};
use vantage_mqtt::{
    EventSeverity, EventStatus, IncidentSubject, MAX_RELAYED_BODY_BYTES, RelayedBody, SourceKind,
    encode, topic,
};

use crate::AppState;
use crate::hub::LiveEvent;
use crate::store::{
    EventWrite, IncidentOp, IncidentRequest, NewEvent, Pairing, PollConfig, Recorded, SourceRow,
    Store, StoreError, now_ms, random_id,
};

/// Longest event title, in bytes.
pub const MAX_TITLE_BYTES: usize = 512;
/// Longest host name, address, tag or external id, in bytes.
pub const MAX_FIELD_BYTES: usize = 255;
/// Most tags of one event; more are dropped.
pub const MAX_TAGS: usize = 32;
/// Most accounts of one chain event; more are dropped.
pub const MAX_ACCOUNTS: usize = 64;
/// Longest raw payload kept with an event, in bytes; a longer one is cut and marked.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Most events in one body; a longer batch is refused whole (the sender splits it).
pub const MAX_EVENTS_PER_BODY: usize = 1000;
/// Largest Zabbix webhook body.
pub const MAX_ZABBIX_BODY_BYTES: usize = 64 * 1024;
/// Largest chain webhook body (a batch of transactions).
pub const MAX_CHAIN_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What can go wrong defining a source or accepting a body.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    /// A source definition the API refuses.
    #[error("{0}")]
    Invalid(String),
    #[error("source {0:?} not found")]
    NotFound(String),
    /// No source, or a wrong secret or signature: nothing is stored.
    #[error("missing or wrong secret or signature for this source")]
    Unauthorized,
    /// A body that is not what the source's sender sends.
    #[error("{0}")]
    Malformed(String),
    /// A body over its bound.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A source to create.
#[derive(Debug, Clone)]
pub struct NewSource {
    pub id: String,
    pub kind: SourceKind,
    /// Alchemy's signing key, or a Helius auth header value of the operator's choosing;
    /// generated when absent (not allowed for Alchemy, whose key Alchemy issues).
    pub secret: Option<String>,
    pub incident_severity: Option<EventSeverity>,
    /// A Zabbix source's API poller.
    pub poll: Option<PollConfig>,
}

/// Refuses a poller the control plane could not run.
fn check_poll(kind: SourceKind, poll: &PollConfig) -> Result<(), IntegrationError> {
    let invalid = |reason: &str| Err(IntegrationError::Invalid(format!("poll: {reason}")));
    if kind != SourceKind::Zabbix {
        return invalid("only a Zabbix source is polled");
    }
    let url = &poll.api_url;
    if url.len() > 512
        || !(url.starts_with("https://") || url.starts_with("http://"))
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
        || reqwest::Url::parse(url).is_err()
    {
        return invalid("api_url must be the http(s) URL of Zabbix's api_jsonrpc.php");
    }
    if poll.api_token.is_empty()
        || poll.api_token.len() > 256
        || poll
            .api_token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return invalid("api_token must be 1-256 characters without spaces");
    }
    if !(1..=3600).contains(&poll.interval_s) {
        return invalid("interval_s must be 1-3600");
    }
    if let Some(groups) = &poll.groupids
        && (groups.is_empty()
            || groups.len() > 1000
            || groups
                .iter()
                .any(|g| g.is_empty() || g.len() > 20 || !g.bytes().all(|b| b.is_ascii_digit())))
    {
        return invalid("groupids must be 1-1000 numeric Zabbix host group ids");
    }
    Ok(())
}

/// Creates a source; returns it with its secret (shown this once).
///
/// # Errors
/// [`IntegrationError::Invalid`] for a bad id or secret, a conflict when the id is taken.
pub async fn create_source(
    state: &AppState,
    new: NewSource,
) -> Result<SourceRow, IntegrationError> {
    if !topic::valid_source_id(&new.id) {
        return Err(IntegrationError::Invalid(
            "id must be 1-64 lower-case letters, digits, '-' or '_', starting with a letter or digit"
                .into(),
        ));
    }
    if new.id == "zabbix" && new.kind != SourceKind::Zabbix {
        return Err(IntegrationError::Invalid(
            "the id \"zabbix\" is kept for a Zabbix source (POST /api/v1/integrations/zabbix)"
                .into(),
        ));
    }
    let secret = match (new.secret, new.kind) {
        (Some(secret), _) => {
            if !(16..=256).contains(&secret.len())
                || secret.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(IntegrationError::Invalid(
                    "secret must be 16-256 characters without spaces".into(),
                ));
            }
            secret
        }
        (None, SourceKind::Alchemy) => {
            return Err(IntegrationError::Invalid(
                "an Alchemy source needs secret: the webhook's signing key from Alchemy".into(),
            ));
        }
        (None, _) => random_id("vsrc_", 24),
    };
    if let Some(poll) = &new.poll {
        check_poll(new.kind, poll)?;
    }
    let row = SourceRow {
        id: new.id,
        kind: new.kind,
        secret,
        incident_severity: new.incident_severity.map(|s| s.as_str().to_owned()),
        poll: new
            .poll
            .as_ref()
            .map(|p| serde_json::to_string(p).unwrap_or_default()),
        poll_cursor: None,
        created_at_ms: now_ms(),
    };
    state.store.insert_source(&row).await?;
    state.sources.invalidate();
    Ok(row)
}

/// Deletes a source; its events stay.
///
/// # Errors
/// [`IntegrationError::NotFound`], store errors.
pub async fn delete_source(state: &AppState, id: &str) -> Result<(), IntegrationError> {
    if state.store.delete_source(id).await? {
        state.sources.invalidate();
        Ok(())
    } else {
        Err(IntegrationError::NotFound(id.to_owned()))
    }
}

/// What a sender presented, as the API found it in the request's headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The whole `Authorization` header.
    pub authorization: Option<&'a str>,
    /// `X-Vantage-Signature` (`sha256=<hex>`).
    pub vantage_signature: Option<&'a str>,
    /// `X-Alchemy-Signature` (hex).
    pub alchemy_signature: Option<&'a str>,
}

/// Whether `signature` (hex, optionally `sha256=`) is the HMAC-SHA256 of `body` with `key`;
/// compared in constant time.
pub fn signature_matches(key: &str, body: &[u8], signature: &str) -> bool {
    let hex_text = signature.trim();
    let hex_text = hex_text.strip_prefix("sha256=").unwrap_or(hex_text);
    let Ok(tag) = hex::decode(hex_text) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

/// Whether two secrets are equal, compared through their digests (no early exit on the
/// secret's own bytes).
fn secret_matches(expected: &str, presented: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    a.as_ref() == b.as_ref()
}

/// Finds the source a request is for and checks its secret or signature.
///
/// `source_id` is the source named in the URL; without one (the Zabbix media type's
/// `POST /api/v1/integrations/zabbix`) the bearer secret picks the Zabbix source.
///
/// # Errors
/// [`IntegrationError::Unauthorized`] for an unknown source or a wrong secret (the same
/// answer, so a caller cannot probe for names); store errors.
pub async fn authenticate(
    state: &AppState,
    source_id: Option<&str>,
    credentials: Credentials<'_>,
    body: &[u8],
) -> Result<SourceRow, IntegrationError> {
    let bearer = credentials
        .authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256);
    let Some(source_id) = source_id else {
        let bearer = bearer.ok_or(IntegrationError::Unauthorized)?;
        return state
            .sources
            .by_secret(state, SourceKind::Zabbix, bearer)
            .await?
            .ok_or(IntegrationError::Unauthorized);
    };
    let source = state
        .sources
        .by_id(state, source_id)
        .await?
        .ok_or(IntegrationError::Unauthorized)?;
    let ok = match source.kind {
        SourceKind::Zabbix => {
            bearer.is_some_and(|t| secret_matches(&source.secret, t))
                || credentials
                    .vantage_signature
                    .is_some_and(|s| signature_matches(&source.secret, body, s))
        }
        // Helius sends the configured auth header verbatim (with or without a scheme).
        SourceKind::Helius => credentials.authorization.is_some_and(|a| {
            secret_matches(&source.secret, a.trim())
                || bearer.is_some_and(|t| secret_matches(&source.secret, t))
        }),
        SourceKind::Alchemy => credentials
            .alchemy_signature
            .is_some_and(|s| signature_matches(&source.secret, body, s)),
        SourceKind::Hmac => credentials
            .vantage_signature
            .is_some_and(|s| signature_matches(&source.secret, body, s)),
    };
    if ok {
        Ok(source)
    } else {
        Err(IntegrationError::Unauthorized)
    }
}

/// One row of a body, after parsing: an event to store or why it was refused.
pub type Parsed = Result<NewEvent, String>;

/// What happened to one row of an accepted body.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Stored {
        id: i64,
        incident_id: Option<String>,
    },
    /// Stored before (a replay, or a retry after a lost answer): nothing changed.
    Duplicate {
        id: i64,
    },
    Refused {
        reason: String,
    },
}

/// Parses `body` as `source`'s sender writes it and takes every row the one path: stored,
/// then published. Rows are answered in body order.
///
/// # Errors
/// [`IntegrationError::Malformed`] when the body as a whole is not what the sender sends
/// (nothing is stored); store errors (rows before the failing one stay stored, and a retry
/// finds them as duplicates).
pub async fn accept(
    state: &AppState,
    source: &SourceRow,
    body: &[u8],
) -> Result<Vec<RowOutcome>, IntegrationError> {
    let rows = match source.kind {
        SourceKind::Zabbix => vec![zabbix::parse_webhook(body)?],
        SourceKind::Helius => chain::parse_helius(body)?,
        SourceKind::Alchemy => chain::parse_alchemy(body)?,
        SourceKind::Hmac => chain::parse_generic(body)?,
    };
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let outcome = match row {
            Ok(event) => record(state, source, &event).await?,
            Err(reason) => {
                state
                    .counters
                    .events_refused
                    .fetch_add(1, Ordering::Relaxed);
                state.source_counters.add(&source.id, EventOutcome::Refused);
                RowOutcome::Refused { reason }
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Takes a webhook body an agent relayed for the source `source_id` the way the source's
/// own webhook takes it: the agent's signature is checked as an `X-Vantage-Signature` (so a
/// Zabbix or hmac source; an agent without the source's secret cannot sign), then the rows
/// are parsed, stored and published as if the sender had posted them here.
///
/// # Errors
/// As [`authenticate`] and [`accept`]; a body over [`MAX_RELAYED_BODY_BYTES`] is
/// [`IntegrationError::TooLarge`].
pub async fn accept_relayed(
    state: &AppState,
    source_id: &str,
    relayed: &RelayedBody,
) -> Result<Vec<RowOutcome>, IntegrationError> {
    let body = relayed.body.as_bytes();
    if body.len() > MAX_RELAYED_BODY_BYTES {
        return Err(IntegrationError::TooLarge(format!(
            "a relayed body is at most {MAX_RELAYED_BODY_BYTES} bytes"
        )));
    }
    let credentials = Credentials {
        authorization: None,
        vantage_signature: Some(&relayed.signature),
        alchemy_signature: None,
    };
    let source = authenticate(state, Some(source_id), credentials, body).await?;
    accept(state, &source, body).await
}

/// Counts a request refused before its rows were read.
pub fn count_refusal(state: &AppState, error: &IntegrationError) {
    let counter = match error {
        IntegrationError::Unauthorized => &state.counters.webhooks_unauthorized,
        IntegrationError::Malformed(_) => &state.counters.webhooks_malformed,
        IntegrationError::TooLarge(_) => &state.counters.webhooks_oversize,
        IntegrationError::Invalid(_)
        | IntegrationError::NotFound(_)
        | IntegrationError::Store(_) => return,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The incident an event of `source` opens, updates or resolves, given how it paired.
fn incident_for(
    source: &SourceRow,
    event: &NewEvent,
    pairing: &Pairing,
    channels: &[String],
    at_ms: i64,
) -> Option<IncidentRequest> {
    let least = source
        .incident_severity
        .as_deref()
        .and_then(EventSeverity::parse)?;
    // Zabbix's event names usually name the host already.
    let on = |host: &Option<String>| match host.as_deref() {
        Some(h) if !event.title.contains(h) => format!(" on {h}"),
        _ => String::new(),
    };
    let (op, text) = match event.status {
        EventStatus::Problem if event.severity >= least && pairing.resolved_before.is_none() => (
            IncidentOp::Open {
                title: format!("{}{}", event.title, on(&event.host)),
                dependent: false,
            },
            format!(
                "{} problem from {}: {} (event {})",
                event.severity.as_str(),
                source.id,
                event.title,
                event.external_id
            ),
        ),
        EventStatus::Resolved => (
            IncidentOp::Resolve,
            format!("resolved in {} (event {})", source.id, event.external_id),
        ),
        EventStatus::Update => (IncidentOp::Update, format!("update: {}", event.title)),
        EventStatus::Problem | EventStatus::Info => return None,
    };
    Some(IncidentRequest {
        subject: IncidentSubject::Event,
        subject_id: format!("{}/{}", source.id, event.external_id),
        op,
        text,
        at_ms,
        channels: channels.to_vec(),
    })
}

/// Stores one event and publishes it (and its incident change), on a task of its own: a
/// caller that goes away (a webhook sender that hung up) cannot leave an event stored but
/// unpublished.
pub(crate) async fn record(
    state: &AppState,
    source: &SourceRow,
    event: &NewEvent,
) -> Result<RowOutcome, IntegrationError> {
    let (state, source, event) = (state.clone(), source.clone(), event.clone());
    tokio::spawn(async move { record_now(&state, &source, &event).await })
        .await
        .unwrap_or(Err(IntegrationError::Store(StoreError::Interrupted(
            "the event's task stopped",
        ))))
}

async fn record_now(
    state: &AppState,
    source: &SourceRow,
    event: &NewEvent,
) -> Result<RowOutcome, IntegrationError> {
    let at_ms = now_ms();
    let mut node = None;
    if event.host.is_some() {
        for name in [
            event.host.as_deref(),
            Some(event.host_name.as_str()),
            Some(event.host_address.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter(|n| !n.is_empty())
        {
            node = state.hosts.lookup(state, name).await;
            if node.is_some() {
                break;
            }
        }
    }
    // An unmapped host is kept as an external node; written again only when it changed or
    // its last sighting is older than a minute.
    let external = match (&node, &event.host) {
        (None, Some(host)) => {
            let seen = ExternalSighting {
                source: source.id.clone(),
                host: host.clone(),
                name: event.host_name.clone(),
                address: event.host_address.clone(),
            };
            (!state.external_seen.fresh(&seen, at_ms)).then_some(seen)
        }
        _ => None,
    };
    let channels = if source.incident_severity.is_some() && event.status != EventStatus::Info {
        crate::incidents::channels(state).await?
    } else {
        Vec::new()
    };
    let write = Write {
        source: source.clone(),
        event: event.clone(),
        node,
        external: external
            .as_ref()
            .map(|seen| (seen.name.clone(), seen.address.clone())),
        received_at_ms: at_ms,
        channels,
    };
    let recorded = state.event_writes.record(&state.store, write).await?;
    if let (Recorded::Stored { .. }, Some(seen)) = (&recorded, external) {
        state.external_seen.note(seen, at_ms);
    }
    match recorded {
        Recorded::Duplicate { id } => {
            state
                .counters
                .events_duplicate
                .fetch_add(1, Ordering::Relaxed);
            state
                .source_counters
                .add(&source.id, EventOutcome::Duplicate);
            Ok(RowOutcome::Duplicate { id })
        }
        Recorded::Stored { event, incident } => {
            state
                .counters
                .events_accepted
                .fetch_add(1, Ordering::Relaxed);
            state.source_counters.add(&source.id, EventOutcome::Stored);
            let view = event.view();
            let _ = state
                .publisher
                .publish(&topic::events(&event.source), encode(&view), false)
                .await;
            state.hub.publish(LiveEvent {
                kind: "event",
                agent_id: event.node.clone().unwrap_or_default(),
                region: String::new(),
                check_id: None,
                source: Some(event.source.clone()),
                at_ms,
                data: serde_json::to_value(&view).unwrap_or_default().into(),
            });
            if let Some(outcome) = &incident {
                crate::incidents::announce(state, outcome).await;
            }
            Ok(RowOutcome::Stored {
                id: event.id,
                incident_id: event.incident_id,
            })
        }
    }
}

/// What became of one event, as counted per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Stored,
    Duplicate,
    Refused,
}

impl EventOutcome {
    const ALL: [EventOutcome; 3] = [
        EventOutcome::Stored,
        EventOutcome::Duplicate,
        EventOutcome::Refused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Stored => "stored",
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::Refused => "refused",
        }
    }
}

/// Most sources counted by name; past it the rest count under `source="other"` (one more
/// series).
const MAX_SOURCES_COUNTED: usize = 256;

/// Events per source and outcome: `vantage_source_events_total{source, outcome}`.
#[derive(Debug, Default)]
pub struct SourceCounters {
    counts: std::sync::Mutex<std::collections::BTreeMap<String, [u64; 3]>>,
}

impl SourceCounters {
    /// Counts one event of `source`.
    pub fn add(&self, source: &str, outcome: EventOutcome) {
        if let Ok(mut counts) = self.counts.lock() {
            let key = if counts.contains_key(source) || counts.len() < MAX_SOURCES_COUNTED {
                source
            } else {
                "other"
            };
            let slot = EventOutcome::ALL
                .iter()
                .position(|o| *o == outcome)
                .unwrap_or(0);
            counts.entry(key.to_owned()).or_default()[slot] += 1;
        }
    }

    /// The counts in the Prometheus text format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from(
            "# HELP vantage_source_events_total Events from integration sources, by source and outcome.\n\
             # TYPE vantage_source_events_total counter\n",
        );
        if let Ok(counts) = self.counts.lock() {
            for (source, values) in counts.iter() {
                for (outcome, value) in EventOutcome::ALL.iter().zip(values) {
                    let _ = writeln!(
                        out,
                        "vantage_source_events_total{{source=\"{source}\",outcome=\"{}\"}} {value}",
                        outcome.as_str()
                    );
                }
            }
        }
        out
    }
}

/// How long an external node's sighting stands before it is written again.
const EXTERNAL_REFRESH_MS: i64 = 60_000;
/// Most sightings remembered; past it the memory starts over.
const MAX_SIGHTINGS: usize = 10_000;

/// An unmapped host as an event named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalSighting {
    source: String,
    host: String,
    name: String,
    address: String,
}

/// The external nodes written lately, so a busy host costs one write a minute, not one per
/// event (its `last_seen_ms` is then exact to the minute). Bounded by [`MAX_SIGHTINGS`].
#[derive(Debug, Default)]
pub struct ExternalSeen {
    written: std::sync::Mutex<HashMap<ExternalSighting, i64>>,
}

impl ExternalSeen {
    /// Whether `seen` was written within [`EXTERNAL_REFRESH_MS`] of `now_ms`.
    fn fresh(&self, seen: &ExternalSighting, now_ms: i64) -> bool {
        self.written.lock().is_ok_and(|written| {
            written
                .get(seen)
                .is_some_and(|at| now_ms - at < EXTERNAL_REFRESH_MS)
        })
    }

    /// Notes that `seen` was written at `now_ms`.
    fn note(&self, seen: ExternalSighting, now_ms: i64) {
        if let Ok(mut written) = self.written.lock() {
            if written.len() >= MAX_SIGHTINGS {
                written.clear();
            }
            written.insert(seen, now_ms);
        }
    }
}

/// Most events one group commit takes.
const MAX_GROUP: usize = 64;

/// An event on its way to the store, with what decides its incident.
#[derive(Debug)]
struct Write {
    source: SourceRow,
    event: NewEvent,
    node: Option<String>,
    external: Option<(String, String)>,
    received_at_ms: i64,
    /// The channels an incident it opens notifies.
    channels: Vec<String>,
}

type Queued = (Write, oneshot::Sender<Result<Recorded, StoreError>>);

/// The group writer: events that arrive together (webhooks in parallel, a poller's page,
/// agents' relayed bodies) are stored in one transaction by one task, so they neither wait
/// on each other's locks nor pay a commit each; each caller is answered after the commit.
#[derive(Debug)]
pub struct EventWrites {
    queue: mpsc::Sender<Queued>,
}

impl EventWrites {
    /// The writer's handle and the task to spawn with [`EventWrites::run`].
    pub fn new() -> (EventWrites, EventQueue) {
        let (queue, receiver) = mpsc::channel(4 * MAX_GROUP);
        (EventWrites { queue }, EventQueue(receiver))
    }

    /// Stores one event through the group writer (directly, should the writer be gone) and
    /// answers once it is committed.
    async fn record(&self, store: &Store, write: Write) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.queue.send((write, reply)).await {
            Ok(()) => match answer.await {
                Ok(recorded) => recorded,
                Err(_) => Err(StoreError::Interrupted("the event writer stopped")),
            },
            Err(mpsc::error::SendError((write, _))) => {
                let mut recorded = write_group(store, std::slice::from_ref(&write)).await;
                recorded
                    .pop()
                    .unwrap_or(Err(StoreError::Interrupted("no answer for the event")))
            }
        }
    }

    /// Runs the writer until every handle is dropped: takes what is queued (up to
    /// [`MAX_GROUP`]), stores it in one transaction, answers each.
    pub async fn run(store: Store, queue: EventQueue) {
        let EventQueue(mut receiver) = queue;
        let mut queued: Vec<Queued> = Vec::with_capacity(MAX_GROUP);
        while receiver.recv_many(&mut queued, MAX_GROUP).await > 0 {
            let (writes, replies): (Vec<Write>, Vec<_>) = queued.drain(..).unzip();
            let recorded = write_group(&store, &writes).await;
            for (reply, recorded) in replies.into_iter().zip(recorded) {
                let _ = reply.send(recorded);
            }
        }
    }
}

/// The receiving end of [`EventWrites`].
#[derive(Debug)]
pub struct EventQueue(mpsc::Receiver<Queued>);

/// Stores `writes` in one transaction; should it fail, each alone, so one event's error is
/// that event's only. One answer per write, in order.
async fn write_group(store: &Store, writes: &[Write]) -> Vec<Result<Recorded, StoreError>> {
    let deciders: Vec<_> = writes
        .iter()
        .map(|w| {
            move |pairing: &Pairing| {
                incident_for(&w.source, &w.event, pairing, &w.channels, w.received_at_ms)
            }
        })
        .collect();
    let group: Vec<EventWrite<'_>> = writes
        .iter()
        .zip(&deciders)
        .map(|(w, decide)| EventWrite {
            source: &w.source,
            event: &w.event,
            node: w.node.as_deref(),
            external: w
                .external
                .as_ref()
                .map(|(name, address)| (name.as_str(), address.as_str())),
            received_at_ms: w.received_at_ms,
            incident: decide,
        })
        .collect();
    match store.record_events(&group).await {
        Ok(recorded) => recorded.into_iter().map(Ok).collect(),
        Err(error) if group.len() == 1 => vec![Err(error)],
        Err(error) => {
            tracing::warn!(%error, n = group.len(), "A group of events did not commit; storing each alone");
            let mut out = Vec::with_capacity(group.len());
            for one in &group {
                out.push(
                    store
                        .record_events(std::slice::from_ref(one))
                        .await
                        .and_then(|mut r| {
                            r.pop()
                                .ok_or(StoreError::Interrupted("no answer for the event"))
                        }),
                );
            }
            out
        }
    }
}

/// The sources, read from the store at most every [`SOURCES_REFRESH_MS`] and at once after
/// this process adds or deletes one: a webhook costs no query to find its source.
#[derive(Debug, Default)]
pub struct SourceCache {
    inner: std::sync::RwLock<Option<(i64, std::sync::Arc<[SourceRow]>)>>,
}

/// How long the sources are kept before they are read again (another replica's changes).
pub const SOURCES_REFRESH_MS: i64 = 10_000;

impl SourceCache {
    /// The sources, shared (a webhook clones one row, not the list).
    async fn sources(&self, state: &AppState) -> Result<std::sync::Arc<[SourceRow]>, StoreError> {
        let now = now_ms();
        if let Ok(inner) = self.inner.read()
            && let Some((at, rows)) = inner.as_ref()
            && now - at <= SOURCES_REFRESH_MS
        {
            return Ok(rows.clone());
        }
        let rows: std::sync::Arc<[SourceRow]> = state.store.list_sources().await?.into();
        if let Ok(mut inner) = self.inner.write() {
            *inner = Some((now, rows.clone()));
        }
        Ok(rows)
    }

    /// The source named `id`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn by_id(&self, state: &AppState, id: &str) -> Result<Option<SourceRow>, StoreError> {
        Ok(self
            .sources(state)
            .await?
            .iter()
            .find(|s| s.id == id)
            .cloned())
    }

    /// The source of `kind` whose secret is `secret`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn by_secret(
        &self,
        state: &AppState,
        kind: SourceKind,
        secret: &str,
    ) -> Result<Option<SourceRow>, StoreError> {
        Ok(self
            .sources(state)
            .await?
            .iter()
            .find(|s| s.kind == kind && secret_matches(&s.secret, secret))
            .cloned())
    }

    /// Reads the sources again at the next request.
    pub fn invalidate(&self) {
        if let Ok(mut inner) = self.inner.write() {
            *inner = None;
        }
    }
}

/// Agents by the names a sender may know them by: id, hostname, the `zabbix_host` label and
/// the `address` label. Read again at most every [`HOSTS_REFRESH_MS`].
#[derive(Debug, Default)]
pub struct HostMap {
    inner: Mutex<(Option<i64>, HashMap<String, String>)>,
}

/// How long the host map is kept before the agents are read again.
pub const HOSTS_REFRESH_MS: i64 = 30_000;

impl HostMap {
    /// The agent a host maps to (names compare case-insensitively), if any.
    pub async fn lookup(&self, state: &AppState, host: &str) -> Option<String> {
        let mut inner = self.inner.lock().await;
        let now = now_ms();
        if inner.0.is_none_or(|at| now - at > HOSTS_REFRESH_MS) {
            match state.store.list_agents(None).await {
                Ok(agents) => {
                    let mut map = HashMap::new();
                    for agent in agents.iter().filter(|a| a.revoked_at_ms.is_none()) {
                        for name in [
                            Some(agent.id.as_str()),
                            Some(agent.hostname.as_str()),
                            agent.labels.0.get("zabbix_host").map(String::as_str),
                            agent.labels.0.get("address").map(String::as_str),
                        ]
                        .into_iter()
                        .flatten()
                        .filter(|n| !n.is_empty())
                        {
                            map.entry(name.to_lowercase())
                                .or_insert_with(|| agent.id.clone());
                        }
                    }
                    *inner = (Some(now), map);
                }
                Err(error) => tracing::warn!(%error, "Cannot read the agents to map event hosts"),
            }
        }
        inner.1.get(&host.to_lowercase()).cloned()
    }

    /// Forgets the map (an agent enrolled or was revoked).
    pub async fn invalidate(&self) {
        self.inner.lock().await.0 = None;
    }
}

/// Cuts a text a sender controls to `max` bytes (see [`vantage_mqtt::text::bound_text`]).
pub(crate) fn bounded(mut text: String, max: usize) -> String {
    vantage_mqtt::text::bound_text(&mut text, max);
    text
}

/// A sender's tags, at most [`MAX_TAGS`], each name and value bounded.
pub(crate) fn bounded_tags(tags: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    tags.take(MAX_TAGS)
        .map(|(tag, value)| {
            (
                bounded(tag, MAX_FIELD_BYTES),
                bounded(value, MAX_FIELD_BYTES),
            )
        })
        .collect()
}

/// The raw JSON of one row, bounded: `(text, cut)`.
pub(crate) fn raw_payload(value: &serde_json::Value) -> (String, bool) {
    let mut text = value.to_string();
    let cut = vantage_mqtt::text::bound_text(&mut text, MAX_PAYLOAD_BYTES).cut;
    (text, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_only_the_right_key_and_body() {
        let key = "whsec_test_key_0123456789";
        let body = br#"{"id":"a"}"#;
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()),
            body,
        );
        let hex_tag = hex::encode(tag.as_ref());
        assert!(signature_matches(key, body, &hex_tag));
        assert!(signature_matches(key, body, &format!("sha256={hex_tag}")));
        assert!(!signature_matches("another_key_0123456789", body, &hex_tag));
        assert!(!signature_matches(key, br#"{"id":"b"}"#, &hex_tag));
        assert!(!signature_matches(key, body, "not hex"));
        assert!(!signature_matches(key, body, ""));
    }

    #[test]
    fn source_counters_count_per_source_within_a_bound() {
        let counters = SourceCounters::default();
        counters.add("zabbix", EventOutcome::Stored);
        counters.add("zabbix", EventOutcome::Stored);
        counters.add("zabbix", EventOutcome::Refused);
        for n in 0..MAX_SOURCES_COUNTED + 5 {
            counters.add(&format!("s{n}"), EventOutcome::Duplicate);
        }
        let text = counters.render();
        assert!(
            text.contains("vantage_source_events_total{source=\"zabbix\",outcome=\"stored\"} 2\n")
        );
        assert!(
            text.contains("vantage_source_events_total{source=\"zabbix\",outcome=\"refused\"} 1\n")
        );
        assert!(
            text.contains(
                "vantage_source_events_total{source=\"other\",outcome=\"duplicate\"} 6\n"
            )
        );
        assert_eq!(text.matches("# TYPE").count(), 1);
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            (MAX_SOURCES_COUNTED + 1) * 3
        );
    }

    #[test]
    fn source_ids_are_url_and_topic_safe() {
        for good in ["zabbix", "helius-main", "a", "prod_1"] {
            assert!(topic::valid_source_id(good), "{good}");
        }
        for bad in ["", "-a", "A", "a/b", "a+b", "a#", &"x".repeat(65), "é"] {
            assert!(!topic::valid_source_id(bad), "{bad}");
        }
    }
}
