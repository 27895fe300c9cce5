//! The in-process live hub: every committed update fans out from here to WebSocket and SSE
//! clients. Ingest publishes only after its transaction commits, so the feed never shows data
//! the store does not hold. Viewers get each event through [`Shared::for_viewers`].
//!
//! State-like events (a check's latest result per agent and region, its verdict, an agent's
//! hello, status and metrics) have a [`key`](LiveEvent::key): the hub keeps the latest event
//! per key, and a client that subscribes gets those first ([`Hub::subscribe`] takes both in
//! one cut, so nothing falls between them). Events published together (a committed batch's
//! rows) travel as one [`Batch`], numbered, so a client that falls behind knows how many it
//! skipped. Each client has its own [`Outbox`]: while the
//! client is slow, a newer event replaces the waiting one of its key, and events without a
//! key (incidents, integration events) queue up to a bound past which they are counted and
//! the client told how many it missed. Nothing a slow client causes grows without bound, and
//! it never slows ingest. With replicas on one PostgreSQL, what is published here also goes to
//! the relay ([`Hub::relay_to`], [`crate::livesync`]) without waiting for it, and what other
//! replicas committed arrives through [`Hub::publish_relayed`].

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::broadcast;

/// One live update.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    /// `result`, `metrics`, `status`, `hello`, `verdict`, `incident`, `event` or `check` (a
    /// check was created, changed or deleted: its id, and `data.change`).
    pub kind: &'static str,
    pub agent_id: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    /// An event's source (integration events and agent-relayed events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the control plane published the update.
    pub at_ms: i64,
    pub data: LiveData,
}

/// An update's `data`: a row as ingest decoded it, serialised only when a client needs its
/// JSON (most rows of a busy fleet reach no client as text: building a JSON tree of each was a
/// fifth of ingest's CPU), or JSON its publisher built.
#[derive(Debug, Clone)]
pub enum LiveData {
    Result(Box<vantage_mqtt::CheckResult>),
    Metrics(Box<vantage_mqtt::HostMetrics>),
    Event(Box<vantage_mqtt::Event>),
    Json(serde_json::Value),
}

impl Serialize for LiveData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LiveData::Result(result) => result.serialize(serializer),
            LiveData::Metrics(metrics) => metrics.serialize(serializer),
            LiveData::Event(event) => event.serialize(serializer),
            LiveData::Json(value) => value.serialize(serializer),
        }
    }
}

impl From<serde_json::Value> for LiveData {
    fn from(value: serde_json::Value) -> Self {
        LiveData::Json(value)
    }
}

impl LiveData {
    /// The data as a JSON tree (built for a row; borrowed for JSON).
    pub fn to_value(&self) -> std::borrow::Cow<'_, serde_json::Value> {
        match self {
            LiveData::Json(value) => std::borrow::Cow::Borrowed(value),
            row => std::borrow::Cow::Owned(serde_json::to_value(row).unwrap_or_default()),
        }
    }
}

/// Every [`LiveEvent::kind`].
pub const KINDS: [&str; 8] = [
    "result", "metrics", "status", "hello", "verdict", "incident", "event", "check",
];

impl LiveEvent {
    /// The kind called `name`, if it is one ([`KINDS`]).
    pub fn kind_named(name: &str) -> Option<&'static str> {
        KINDS.into_iter().find(|kind| *kind == name)
    }

    /// Whether a newer event of the same kind, agent, check and region supersedes this one
    /// (the kinds that carry a state); incidents and integration events do not.
    pub fn keyed(&self) -> bool {
        matches!(
            self.kind,
            "result" | "metrics" | "status" | "hello" | "verdict"
        )
    }
}

/// An event as the hub carries it: serialised once, for every client that gets it.
#[derive(Debug)]
pub struct Shared {
    pub event: LiveEvent,
    /// The hub's number for the event (events published before it).
    pub seq: u64,
    json: OnceLock<Utf8Bytes>,
    /// What viewers get: `None` when it is this event itself (worked out once, for every
    /// viewer client).
    for_viewers: OnceLock<Option<Arc<Shared>>>,
}

impl Shared {
    fn new(event: LiveEvent, seq: u64) -> Arc<Shared> {
        Arc::new(Shared {
            event,
            seq,
            json: OnceLock::new(),
            for_viewers: OnceLock::new(),
        })
    }

    /// The event as JSON text (serialised on first use).
    pub fn json(&self) -> Utf8Bytes {
        self.json
            .get_or_init(|| Utf8Bytes::from(serde_json::to_string(&self.event).unwrap_or_default()))
            .clone()
    }

    /// This event as a viewer may see it: every URL in its data scrubbed
    /// ([`vantage_mqtt::redact::scrub_json`]); the same `Arc` when there is none.
    pub fn for_viewers(shared: Arc<Shared>) -> Arc<Shared> {
        shared
            .for_viewers
            .get_or_init(|| Shared::redacted(&shared))
            .clone()
            .unwrap_or(shared)
    }

    /// The scrubbed copy of `shared`, `None` when nothing needs scrubbing.
    fn redacted(shared: &Shared) -> Option<Arc<Shared>> {
        fn holds_url(value: &serde_json::Value) -> bool {
            match value {
                serde_json::Value::String(text) => text.contains("://"),
                serde_json::Value::Array(items) => items.iter().any(holds_url),
                serde_json::Value::Object(map) => map.values().any(holds_url),
                _ => false,
            }
        }
        let mut data = shared.event.data.to_value();
        if !holds_url(&data) {
            return None;
        }
        let mut shown = shared.event.clone();
        vantage_mqtt::redact::scrub_json(data.to_mut()).then(|| {
            shown.data = LiveData::Json(data.into_owned());
            Shared::new(shown, shared.seq)
        })
    }
}

/// A keyed event, hashed and compared by its key (kind, agent, check, region) alone.
#[derive(Debug, Clone)]
struct ByKey(Arc<Shared>);

impl ByKey {
    /// Whether two events have one key.
    fn same(a: &LiveEvent, b: &LiveEvent) -> bool {
        a.kind == b.kind
            && a.agent_id == b.agent_id
            && a.check_id == b.check_id
            && a.region == b.region
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        ByKey::same(&self.0.event, &other.0.event)
    }
}

impl Eq for ByKey {}

impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let e = &self.0.event;
        (e.kind, &e.agent_id, &e.check_id, &e.region).hash(state);
    }
}

/// Filters a live client subscribes with; `None` matches everything.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct LiveFilter {
    pub region: Option<String>,
    pub agent: Option<String>,
    pub check: Option<String>,
    pub kind: Option<String>,
    pub source: Option<String>,
}

impl LiveFilter {
    /// Whether `event` passes every filter that is set.
    pub fn matches(&self, event: &LiveEvent) -> bool {
        self.region.as_deref().is_none_or(|r| r == event.region)
            && self.agent.as_deref().is_none_or(|a| a == event.agent_id)
            && self
                .check
                .as_deref()
                .is_none_or(|c| event.check_id.as_deref() == Some(c))
            && self.kind.as_deref().is_none_or(|k| k == event.kind)
            && self
                .source
                .as_deref()
                .is_none_or(|s| event.source.as_deref() == Some(s))
    }
}

/// Most keys the hub keeps the latest event of; past it the tenth least recently updated is
/// forgotten (keys of deleted checks and agents age out this way).
pub const MAX_LATEST: usize = 500_000;

/// The latest event per key, also in the order they were published.
#[derive(Debug, Default)]
struct Latest {
    events: HashSet<ByKey>,
    by_seq: BTreeMap<u64, Arc<Shared>>,
    /// Keys forgotten to stay within [`MAX_LATEST`].
    forgotten: u64,
    /// Events published so far.
    published: u64,
    /// Events without a key published so far.
    unkeyed: u64,
}

impl Latest {
    fn keep(&mut self, shared: &Arc<Shared>, max: usize) {
        if let Some(old) = self.events.replace(ByKey(shared.clone())) {
            self.by_seq.remove(&old.0.seq);
        }
        self.by_seq.insert(shared.seq, shared.clone());
        if self.events.len() > max {
            let n = (max / 10).max(1);
            for _ in 0..n {
                let Some((_, oldest)) = self.by_seq.pop_first() else {
                    break;
                };
                self.events.remove(&ByKey(oldest));
                self.forgotten += 1;
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    sender: broadcast::Sender<Batch>,
    latest: Mutex<Latest>,
    max_latest: usize,
    /// Where events published here also go, for other replicas ([`Hub::relay_to`]).
    relay: OnceLock<tokio::sync::mpsc::Sender<Arc<[Arc<Shared>]>>>,
    /// Batches the relay's queue had no room for.
    relay_dropped: std::sync::atomic::AtomicU64,
}

/// Events published together (a committed ingest batch's rows), carried as one message.
#[derive(Debug, Clone)]
pub struct Batch {
    /// How many events the hub had published before this batch.
    pub first_seq: u64,
    /// How many events without a key the hub had published before this batch.
    pub unkeyed_before: u64,
    pub events: Arc<[Arc<Shared>]>,
}

/// The broadcast hub.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(8192)
    }
}

/// A client's subscription: the latest event of each key updated since the number it asked
/// from (every key for a new client), and everything published after, cut at one point.
pub struct Subscription {
    pub snapshot: Vec<Arc<Shared>>,
    pub receiver: broadcast::Receiver<Batch>,
    /// Events published before the cut (the first the receiver gets has this number).
    pub seq: u64,
    /// Events without a key published before the cut.
    pub unkeyed: u64,
}

impl Hub {
    /// A hub whose subscribers may fall `capacity` batches behind before they lag.
    pub fn new(capacity: usize) -> Hub {
        Hub::with_limits(capacity, MAX_LATEST)
    }

    /// [`Hub::new`] keeping the latest event of at most `max_latest` keys.
    pub fn with_limits(capacity: usize, max_latest: usize) -> Hub {
        let (sender, _) = broadcast::channel(capacity);
        Hub {
            inner: Arc::new(Inner {
                sender,
                latest: Mutex::new(Latest::default()),
                relay: OnceLock::new(),
                relay_dropped: std::sync::atomic::AtomicU64::new(0),
                max_latest: max_latest.max(1),
            }),
        }
    }

    /// Publishes an update to every current subscriber (and keeps it when it has a key).
    pub fn publish(&self, event: LiveEvent) {
        self.publish_many(vec![event]);
    }

    /// Publishes updates as one message (a client wakes once for all of them), and hands
    /// them to the relay to other replicas when there is one.
    pub fn publish_many(&self, events: Vec<LiveEvent>) {
        if let Some(events) = self.publish_here(events)
            && let Some(relay) = self.inner.relay.get()
            && relay.try_send(events).is_err()
        {
            self.inner
                .relay_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Publishes updates another replica committed (they are not relayed again).
    pub fn publish_relayed(&self, events: Vec<LiveEvent>) {
        self.publish_here(events);
    }

    /// From now on, hands every batch published here ([`Hub::publish_many`]) to `relay`
    /// without waiting: a batch it has no room for is counted ([`Hub::relay_dropped`]).
    /// Only the first call takes effect.
    pub fn relay_to(&self, relay: tokio::sync::mpsc::Sender<Arc<[Arc<Shared>]>>) {
        let _ = self.inner.relay.set(relay);
    }

    /// Batches the relay had no room for.
    pub fn relay_dropped(&self) -> u64 {
        self.inner
            .relay_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn publish_here(&self, events: Vec<LiveEvent>) -> Option<Arc<[Arc<Shared>]>> {
        if events.is_empty() {
            return None;
        }
        let mut latest = self.lock();
        let first_seq = latest.published;
        let unkeyed_before = latest.unkeyed;
        let events: Arc<[Arc<Shared>]> = events
            .into_iter()
            .zip(first_seq..)
            .map(|(event, seq)| Shared::new(event, seq))
            .collect();
        for (i, shared) in events.iter().enumerate() {
            if shared.event.keyed() {
                // An event the next one replaces at once (rows of one key that follow each
                // other) is not kept even for that moment.
                let replaced = events
                    .get(i + 1)
                    .is_some_and(|next| ByKey::same(&shared.event, &next.event));
                if !replaced {
                    latest.keep(shared, self.inner.max_latest);
                }
            } else {
                latest.unkeyed += 1;
            }
        }
        latest.published += events.len() as u64;
        // Sent under the lock, so a subscription's snapshot and its receiver cut the
        // stream at one point.
        let _ = self.inner.sender.send(Batch {
            first_seq,
            unkeyed_before,
            events: events.clone(),
        });
        Some(events)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.inner
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new subscription with the latest state of every key.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_from(0)
    }

    /// A subscription at the present with the latest event of every key updated from event
    /// number `from_seq` on: how a client that fell behind catches up, at a cost of the keys
    /// that changed, whatever the number of events.
    pub fn subscribe_from(&self, from_seq: u64) -> Subscription {
        let latest = self.lock();
        let receiver = self.inner.sender.subscribe();
        let snapshot = latest
            .by_seq
            .range(from_seq..)
            .map(|(_, shared)| shared.clone())
            .collect();
        Subscription {
            snapshot,
            receiver,
            seq: latest.published,
            unkeyed: latest.unkeyed,
        }
    }

    /// The latest event of every key passing `filter`.
    pub fn latest_matching(&self, filter: &LiveFilter) -> Vec<Arc<Shared>> {
        self.lock()
            .by_seq
            .values()
            .filter(|s| filter.matches(&s.event))
            .cloned()
            .collect()
    }

    /// Keys whose latest event is kept, and keys forgotten to stay within the bound.
    pub fn latest_len(&self) -> (usize, u64) {
        let latest = self.lock();
        (latest.events.len(), latest.forgotten)
    }

    /// Number of live subscribers.
    pub fn n_subscribers(&self) -> usize {
        self.inner.sender.receiver_count()
    }
}

/// Most events without a key one client's outbox holds.
pub const MAX_UNKEYED: usize = 1024;
/// Most keys one client's outbox holds waiting.
pub const MAX_KEYED: usize = 200_000;

/// What a client is sent next.
#[derive(Debug)]
pub enum Next {
    Event(Arc<Shared>),
    /// Events without a key dropped because the client was too slow, or events the hub
    /// could not hand this client (it fell behind the broadcast), since the last notice.
    Lagged {
        missed: u64,
    },
}

#[derive(Debug)]
enum Slot {
    /// A key waiting; its newest event is in `Outbox::waiting`.
    Keyed(ByKey),
    Unkeyed(Arc<Shared>),
}

/// One client's queue: the latest event per key, and a bounded queue of the others, in the
/// order they first waited.
#[derive(Debug, Default)]
pub struct Outbox {
    waiting: HashSet<ByKey>,
    order: VecDeque<Slot>,
    unkeyed: usize,
    missed: u64,
    /// Events replaced by a newer one of their key before they were sent.
    pub coalesced: u64,
}

impl Outbox {
    /// Queues an event for the client.
    pub fn push(&mut self, shared: Arc<Shared>) {
        if shared.event.keyed() {
            let key = ByKey(shared);
            if self.waiting.contains(&key) {
                self.waiting.replace(key);
                self.coalesced += 1;
            } else if self.waiting.len() >= MAX_KEYED {
                self.missed += 1;
            } else {
                self.waiting.insert(key.clone());
                self.order.push_back(Slot::Keyed(key));
            }
        } else if self.unkeyed >= MAX_UNKEYED {
            self.missed += 1;
        } else {
            self.unkeyed += 1;
            self.order.push_back(Slot::Unkeyed(shared));
        }
    }

    /// Counts events the client could not be handed.
    pub fn missed(&mut self, n: u64) {
        self.missed += n;
    }

    /// The next thing to send: a notice of what was missed first, then events in order.
    pub fn pop(&mut self) -> Option<Next> {
        if self.missed > 0 {
            return Some(Next::Lagged {
                missed: std::mem::take(&mut self.missed),
            });
        }
        match self.order.pop_front()? {
            Slot::Keyed(key) => self.waiting.take(&key).map(|k| Next::Event(k.0)),
            Slot::Unkeyed(shared) => {
                self.unkeyed -= 1;
                Some(Next::Event(shared))
            }
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty() && self.missed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &'static str, region: &str, check: Option<&str>) -> LiveEvent {
        LiveEvent {
            kind,
            agent_id: "a1".into(),
            region: region.into(),
            check_id: check.map(Into::into),
            source: None,
            at_ms: 0,
            data: serde_json::Value::Null.into(),
        }
    }

    #[test]
    fn filters_match_only_what_they_name() {
        let all = LiveFilter::default();
        let europe = LiveFilter {
            region: Some("europe".into()),
            ..LiveFilter::default()
        };
        let web = LiveFilter {
            check: Some("web".into()),
            kind: Some("result".into()),
            ..LiveFilter::default()
        };
        let e = event("result", "europe", Some("web"));
        let m = event("metrics", "asia", None);
        assert!(all.matches(&e) && all.matches(&m));
        assert!(europe.matches(&e) && !europe.matches(&m));
        assert!(web.matches(&e) && !web.matches(&m));
    }

    #[test]
    fn viewers_see_urls_without_credentials() {
        let mut secret = event("result", "asia", Some("c"));
        secret.data =
            serde_json::json!({"ok": false, "reason": "redirect loop at http://u:pw@h/x"}).into();
        let shown = Shared::for_viewers(Shared::new(secret, 0));
        assert_eq!(
            shown.event.data.to_value()["reason"],
            "redirect loop at http://<redacted>@h/x"
        );
        assert!(!shown.json().contains("pw@"));
        let plain = Shared::new(event("metrics", "asia", None), 0);
        assert!(Arc::ptr_eq(&Shared::for_viewers(plain.clone()), &plain));
    }

    #[test]
    fn a_row_serialises_as_its_json_and_viewers_see_its_urls_scrubbed() {
        let result = vantage_mqtt::CheckResult {
            seq: 7,
            measured_at_ms: 1_000,
            check_id: "c".into(),
            ok: false,
            reason: "redirect loop at http://u:pw@h/x".into(),
            timings: vantage_mqtt::Timings::default(),
            status_code: Some(302),
            values: [("loss_pct".to_owned(), 0.5)].into(),
        };
        let mut row = event("result", "asia", Some("c"));
        row.data = LiveData::Result(Box::new(result.clone()));
        assert_eq!(*row.data.to_value(), serde_json::to_value(&result).unwrap());
        let shared = Shared::new(row, 0);
        let json: serde_json::Value = serde_json::from_str(shared.json().as_str()).unwrap();
        assert_eq!(json["data"], serde_json::to_value(&result).unwrap());
        let shown = Shared::for_viewers(shared.clone());
        assert_eq!(
            shown.event.data.to_value()["reason"],
            "redirect loop at http://<redacted>@h/x"
        );
        assert_eq!(shown.event.data.to_value()["status_code"], 302);
        assert!(shared.json().contains("pw@") && !shown.json().contains("pw@"));
    }

    fn numbered(kind: &'static str, check: &str, n: i64) -> LiveEvent {
        let mut e = event(kind, "asia", Some(check));
        e.at_ms = n;
        e.data = serde_json::json!({ "n": n }).into();
        e
    }

    #[tokio::test]
    async fn a_subscription_starts_with_the_latest_event_per_key_then_follows() {
        let hub = Hub::new(16);
        for n in 0..30 {
            hub.publish(numbered("result", &format!("c{}", n % 3), n));
        }
        hub.publish(numbered("incident", "c0", 30));
        let Subscription {
            snapshot,
            mut receiver,
            seq,
            unkeyed,
        } = hub.subscribe();
        assert_eq!((seq, unkeyed), (31, 1));
        let mut latest: Vec<(String, i64)> = snapshot
            .iter()
            .map(|s| {
                (
                    s.event.check_id.clone().unwrap_or_default(),
                    s.event.data.to_value()["n"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        latest.sort();
        assert_eq!(
            latest,
            [("c0".into(), 27), ("c1".into(), 28), ("c2".into(), 29)]
        );
        hub.publish(numbered("result", "c0", 31));
        let batch = receiver.recv().await.unwrap();
        assert_eq!(batch.first_seq, 31);
        assert_eq!(batch.events[0].event.data.to_value()["n"], 31);
        assert_eq!(hub.latest_len(), (3, 0));
        assert_eq!(hub.n_subscribers(), 1);
    }

    #[test]
    fn a_client_behind_catches_up_with_the_keys_updated_since_its_place() {
        let hub = Hub::new(16);
        for n in 0..30 {
            hub.publish(numbered("result", &format!("c{}", n % 3), n));
        }
        hub.publish(numbered("incident", "c0", 30));
        let since = |seq| {
            let mut got: Vec<i64> = hub
                .subscribe_from(seq)
                .snapshot
                .iter()
                .map(|s| s.event.data.to_value()["n"].as_i64().unwrap_or(-1))
                .collect();
            got.sort_unstable();
            got
        };
        assert_eq!(since(0), [27, 28, 29]);
        assert_eq!(since(28), [28, 29]);
        assert_eq!(since(30), Vec::<i64>::new());
        assert_eq!(hub.subscribe_from(28).unkeyed, 1);
    }

    #[test]
    fn the_hub_forgets_its_oldest_keys_past_its_bound() {
        let hub = Hub::with_limits(4, 10);
        for n in 0..25 {
            hub.publish(numbered("result", &format!("c{n}"), n));
        }
        let (kept, forgotten) = hub.latest_len();
        assert!(kept <= 10, "{kept}");
        assert_eq!(kept as u64 + forgotten, 25);
        let newest = hub.latest_matching(&LiveFilter {
            check: Some("c24".into()),
            ..LiveFilter::default()
        });
        assert_eq!(newest.len(), 1);
        assert!(
            hub.latest_matching(&LiveFilter {
                check: Some("c0".into()),
                ..LiveFilter::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn a_slow_clients_outbox_keeps_the_latest_per_key_and_bounds_the_rest() {
        let mut outbox = Outbox::default();
        for n in 0..10_000 {
            outbox.push(Shared::new(
                numbered("result", &format!("c{}", n % 10), n),
                n as u64,
            ));
        }
        assert_eq!(outbox.len(), 10);
        assert_eq!(outbox.coalesced, 9_990);
        let mut sent = Vec::new();
        while let Some(next) = outbox.pop() {
            match next {
                Next::Event(e) => sent.push(e.event.data.to_value()["n"].as_i64().unwrap_or(-1)),
                Next::Lagged { missed } => panic!("nothing was missed, told {missed}"),
            }
        }
        assert_eq!(sent, (9_990..10_000).collect::<Vec<_>>());
        assert!(outbox.is_empty());

        let extra = 5;
        for n in 0..(MAX_UNKEYED + extra) {
            outbox.push(Shared::new(numbered("incident", "c0", n as i64), n as u64));
        }
        assert!(matches!(outbox.pop(), Some(Next::Lagged { missed }) if missed == extra as u64));
        let mut events = 0;
        while let Some(Next::Event(e)) = outbox.pop() {
            assert_eq!(e.event.data.to_value()["n"], events);
            events += 1;
        }
        assert_eq!(events, MAX_UNKEYED as i64);
        outbox.missed(3);
        assert!(matches!(outbox.pop(), Some(Next::Lagged { missed: 3 })));
    }
}
