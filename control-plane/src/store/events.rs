//! Integration sources, the events they send, and the hosts they name that map to no agent,
//! as stored.
//!
//! [`Store::record_events`] is the one write that matters: the event (unless its dedup key
//! was seen: a replay changes nothing), its pairing with its problem or resolution, and the
//! incident change it causes are committed together, so an acknowledged event always has
//! its incident and a crash before the commit leaves the sender to retry. Events that arrive
//! together share one transaction (a group commit).

use serde::Serialize;
use vantage_mqtt::{EventSeverity, EventStatus, SourceEventView, SourceKind};

use super::incidents::apply_incident;
use super::{
    BeginWrite, IncidentOutcome, IncidentRequest, Store, StoreError, hash_secret, on_pool,
};

/// An integration source as stored. Its secret is read only to check a signature.
#[derive(Clone, sqlx::FromRow)]
pub struct SourceRow {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub kind: SourceKind,
    pub secret: String,
    /// The least severity of a problem that opens an incident (`None`: never).
    pub incident_severity: Option<String>,
    /// A Zabbix source's API poller, as JSON ([`PollConfig`]); it holds the API token.
    pub poll: Option<String>,
    /// The last Zabbix event id the poller stored.
    pub poll_cursor: Option<i64>,
    pub created_at_ms: i64,
}

/// How a Zabbix source's API is polled.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// `https://zabbix.example/api_jsonrpc.php`.
    pub api_url: String,
    /// An API token (Zabbix 6.0: Administration → API tokens), sent as the request's `auth`.
    pub api_token: String,
    /// Seconds between polls (1-3600).
    pub interval_s: u32,
    /// Only events of hosts in these host groups (Zabbix's `groupids`); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupids: Option<Vec<String>>,
}

impl std::fmt::Debug for PollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollConfig")
            .field("api_url", &self.api_url)
            .field("api_token", &"<redacted>")
            .field("interval_s", &self.interval_s)
            .field("groupids", &self.groupids)
            .finish()
    }
}

impl SourceRow {
    /// The poller's settings, if the source is polled (and they decode).
    pub fn poll_config(&self) -> Option<PollConfig> {
        self.poll
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
    }
}

impl std::fmt::Debug for SourceRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceRow")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .field("incident_severity", &self.incident_severity)
            .field("polled", &self.poll.is_some())
            .field("poll_cursor", &self.poll_cursor)
            .finish()
    }
}

/// An event to store (its id and pairing are the store's to fill).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub dedup_key: String,
    pub external_id: String,
    pub status: EventStatus,
    pub severity: EventSeverity,
    pub title: String,
    pub host: Option<String>,
    /// The host's visible name and address, as the sender gave them ("" when it did not).
    pub host_name: String,
    pub host_address: String,
    pub occurred_at_ms: i64,
    pub block: Option<i64>,
    pub accounts: Vec<String>,
    pub tags: Vec<(String, String)>,
    /// The sender's JSON for this event, bounded.
    pub payload: String,
    pub payload_truncated: bool,
}

/// A host a source named, to keep as a node of its own when no agent is it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ExternalNodeRow {
    pub source: String,
    pub host: String,
    pub name: String,
    pub address: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub source: String,
    #[sqlx(try_from = "String")]
    pub kind: SourceKind,
    pub dedup_key: String,
    pub external_id: String,
    #[sqlx(try_from = "String")]
    pub status: EventStatus,
    #[sqlx(try_from = "String")]
    pub severity: EventSeverity,
    pub title: String,
    pub host: Option<String>,
    pub node: Option<String>,
    pub occurred_at_ms: i64,
    pub received_at_ms: i64,
    pub block: Option<i64>,
    pub accounts: String,
    pub tags: String,
    pub payload: String,
    pub payload_truncated: bool,
    pub problem_id: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub incident_id: Option<String>,
}

impl EventRow {
    /// The event as the feed, the `events/{source}` topic and the API carry it.
    pub fn view(&self) -> SourceEventView {
        SourceEventView {
            v: vantage_mqtt::PROTOCOL_VERSION,
            id: self.id,
            source: self.source.clone(),
            kind: self.kind,
            status: self.status,
            severity: self.severity,
            external_id: self.external_id.clone(),
            title: self.title.clone(),
            host: self.host.clone(),
            node: self.node.clone(),
            occurred_at_ms: self.occurred_at_ms,
            received_at_ms: self.received_at_ms,
            block: self.block,
            accounts: serde_json::from_str(&self.accounts).unwrap_or_default(),
            tags: serde_json::from_str(&self.tags).unwrap_or_default(),
            problem_id: self.problem_id,
            resolved_at_ms: self.resolved_at_ms,
            incident_id: self.incident_id.clone(),
        }
    }
}

/// One event for [`Store::record_events`], with what decides its node and incident.
#[derive(Clone, Copy)]
pub struct EventWrite<'a> {
    pub source: &'a SourceRow,
    pub event: &'a NewEvent,
    /// The agent its host maps to.
    pub node: Option<&'a str>,
    /// Else the host's (name, address), kept as an external node.
    pub external: Option<(&'a str, &'a str)>,
    pub received_at_ms: i64,
    pub incident: IncidentFor<'a>,
}

/// What [`Store::record_events`] did with one event.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// Stored now, with the incident change it caused.
    Stored {
        event: Box<EventRow>,
        incident: Option<IncidentOutcome>,
    },
    /// Its dedup key was already stored: nothing changed.
    Duplicate { id: i64 },
}

/// What decides an event's incident once the store has paired it: the request to apply when
/// the event is new, given its pairing.
pub type IncidentFor<'a> = &'a (dyn Fn(&Pairing) -> Option<IncidentRequest> + Sync);

/// How a new event pairs with what is stored under its external id.
#[derive(Debug, Clone, Default)]
pub struct Pairing {
    /// A problem: its resolution was stored before it (out of order); it is resolved at once.
    pub resolved_before: Option<i64>,
    /// A resolution or an update: the stored problem it belongs to.
    pub problem: Option<i64>,
}

/// The columns of an [`EventRow`], for `RETURNING`.
const EVENT_RETURNING: &str = "id, source, kind, dedup_key, external_id, status, severity, title, host, \
    node, occurred_at_ms, received_at_ms, block, accounts, tags, payload, payload_truncated, problem_id, \
    resolved_at_ms, incident_id";

const EVENT_COLUMNS: &str = "SELECT id, source, kind, dedup_key, external_id, status, severity, title, host, \
    node, occurred_at_ms, received_at_ms, block, accounts, tags, payload, payload_truncated, problem_id, \
    resolved_at_ms, incident_id FROM source_events";

const SOURCE_COLUMNS: &str = "SELECT id, kind, secret, incident_severity, poll, poll_cursor, \
    created_at_ms FROM sources";

impl Store {
    /// Adds a source.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id is taken; database errors.
    pub async fn insert_source(&self, row: &SourceRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO sources (id, kind, secret, secret_hash, incident_severity, poll, \
                   poll_cursor, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                   ON CONFLICT (id) DO NOTHING";
        let n = on_pool!(self, pool => sqlx::query(sql)
            .bind(&row.id)
            .bind(row.kind.as_str())
            .bind(&row.secret)
            .bind(hash_secret(&row.secret))
            .bind(&row.incident_severity)
            .bind(&row.poll)
            .bind(row.poll_cursor)
            .bind(row.created_at_ms)
            .execute(pool)
            .await?
            .rows_affected());
        if n == 0 {
            return Err(StoreError::Conflict {
                what: "source",
                id: row.id.clone(),
            });
        }
        Ok(())
    }

    /// Every source, by id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_sources(&self) -> Result<Vec<SourceRow>, StoreError> {
        let sql = format!("{SOURCE_COLUMNS} ORDER BY id");
        Ok(on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?))
    }

    /// One source.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get_source(&self, id: &str) -> Result<Option<SourceRow>, StoreError> {
        let sql = format!("{SOURCE_COLUMNS} WHERE id = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?),
        )
    }

    /// The source of `kind` whose secret is `secret` (bearer secrets).
    ///
    /// # Errors
    /// Database errors.
    pub async fn source_by_secret(
        &self,
        kind: SourceKind,
        secret: &str,
    ) -> Result<Option<SourceRow>, StoreError> {
        let sql = format!("{SOURCE_COLUMNS} WHERE secret_hash = $1 AND kind = $2");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(hash_secret(secret))
            .bind(kind.as_str())
            .fetch_optional(pool)
            .await?),
        )
    }

    /// Records the last Zabbix event id a source's poller stored.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_poll_cursor(&self, id: &str, cursor: i64) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("UPDATE sources SET poll_cursor = $2 WHERE id = $1")
            .bind(id)
            .bind(cursor)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Removes a source (its events stay); whether it existed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_source(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_pool!(self, pool => sqlx::query("DELETE FROM sources WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// Stores each of `writes` in order, in one transaction (a group commit: one fsync for
    /// the group). Each event is stored unless its dedup key is stored already, an earlier
    /// write of the group included (then it answers the stored event's id and writes
    /// nothing); it is paired with its problem or resolution, records its node (the agent its
    /// host maps to) or else its host as an external node, and gets the incident change its
    /// `incident` decides.
    ///
    /// # Errors
    /// Database errors; then nothing of the group was written.
    pub async fn record_events(
        &self,
        writes: &[EventWrite<'_>],
    ) -> Result<Vec<Recorded>, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut recorded = Vec::with_capacity(writes.len());
            for write in writes {
                let EventWrite { source, event, node, external, received_at_ms, incident } = *write;
                let accounts = serde_json::to_string(&event.accounts).unwrap_or_else(|_| "[]".into());
                let tags = serde_json::to_string(&event.tags).unwrap_or_else(|_| "[]".into());
                // A dedup key seen before inserts nothing: a replay changes nothing. The other
                // half of the pair, stored under the same external id, is found by the same
                // statement: a resolution or update gets its problem's id, a problem the time
                // its resolution arrived if that came first.
                let inserted: Option<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO source_events (source, kind, dedup_key, external_id, status, severity, title, host, node, \
                     occurred_at_ms, received_at_ms, block, accounts, tags, payload, payload_truncated, problem_id, \
                     resolved_at_ms, incident_id) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     CASE WHEN $5 IN ('resolved', 'update') THEN (SELECT id FROM source_events \
                       WHERE source = $1 AND external_id = $4 AND status = 'problem' ORDER BY id LIMIT 1) END, \
                     CASE WHEN $5 = 'problem' THEN (SELECT received_at_ms FROM source_events \
                       WHERE source = $1 AND external_id = $4 AND status = 'resolved' ORDER BY id LIMIT 1) END, \
                     NULL WHERE true \
                     ON CONFLICT (source, dedup_key) DO NOTHING RETURNING {EVENT_RETURNING}"
                )))
                .bind(&source.id)
                .bind(source.kind.as_str())
                .bind(&event.dedup_key)
                .bind(&event.external_id)
                .bind(event.status.as_str())
                .bind(event.severity.as_str())
                .bind(&event.title)
                .bind(&event.host)
                .bind(node)
                .bind(event.occurred_at_ms)
                .bind(received_at_ms)
                .bind(event.block)
                .bind(&accounts)
                .bind(&tags)
                .bind(&event.payload)
                .bind(event.payload_truncated)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(mut row) = inserted else {
                    let (id,): (i64,) = sqlx::query_as(
                        "SELECT id FROM source_events WHERE source = $1 AND dedup_key = $2",
                    )
                    .bind(&source.id)
                    .bind(&event.dedup_key)
                    .fetch_one(&mut *tx)
                    .await?;
                    recorded.push(Recorded::Duplicate { id });
                    continue;
                };
                let pairing = Pairing {
                    resolved_before: row.resolved_at_ms.filter(|_| event.status == EventStatus::Problem),
                    problem: row.problem_id,
                };
                let request = incident(&pairing);
                let outcome = match &request {
                    Some(request) => apply_incident!(tx, request),
                    None => None,
                };
                if let Some(outcome) = &outcome {
                    sqlx::query("UPDATE source_events SET incident_id = $2 WHERE id = $1")
                        .bind(row.id)
                        .bind(&outcome.incident.id)
                        .execute(&mut *tx)
                        .await?;
                    row.incident_id = Some(outcome.incident.id.clone());
                }
                if pairing.resolved_before.is_some() {
                    // Its resolution (and any update) came first: they belong to it now.
                    sqlx::query(
                        "UPDATE source_events SET problem_id = $3 WHERE source = $1 AND external_id = $2 \
                         AND status IN ('resolved', 'update') AND problem_id IS NULL",
                    )
                    .bind(&source.id)
                    .bind(&event.external_id)
                    .bind(row.id)
                    .execute(&mut *tx)
                    .await?;
                }
                if event.status == EventStatus::Resolved {
                    sqlx::query(
                        "UPDATE source_events SET resolved_at_ms = $3 WHERE source = $1 AND external_id = $2 \
                         AND status = 'problem' AND resolved_at_ms IS NULL",
                    )
                    .bind(&source.id)
                    .bind(&event.external_id)
                    .bind(received_at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some((name, address)) = external
                    && let Some(host) = &event.host
                {
                    sqlx::query(
                        "INSERT INTO external_nodes (source, host, name, address, first_seen_ms, last_seen_ms) \
                         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (source, host) DO UPDATE SET \
                         name = excluded.name, address = excluded.address, last_seen_ms = excluded.last_seen_ms",
                    )
                    .bind(&source.id)
                    .bind(host)
                    .bind(name)
                    .bind(address)
                    .bind(received_at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                recorded.push(Recorded::Stored { event: Box::new(row), incident: outcome });
            }
            tx.commit().await?;
            Ok(recorded)
        })
    }

    /// Events, newest first: of `source` if given, with `status` if given, received before
    /// `before_id` if given; at most `limit`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_events(
        &self,
        source: Option<&str>,
        status: Option<EventStatus>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!(
            "{EVENT_COLUMNS} WHERE ($1 IS NULL OR source = $1) AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        );
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(source)
            .bind(status.map(EventStatus::as_str))
            .bind(before_id)
            .bind(limit)
            .fetch_all(pool)
            .await?),
        )
    }

    /// One event.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get_event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        let sql = format!("{EVENT_COLUMNS} WHERE id = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?),
        )
    }

    /// Hosts that sources named and no agent is, by source and host.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_external_nodes(&self) -> Result<Vec<ExternalNodeRow>, StoreError> {
        let sql = "SELECT source, host, name, address, first_seen_ms, last_seen_ms FROM external_nodes \
                   ORDER BY source, host";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    /// Deletes events received before `before_ms` (and external nodes last seen then), in
    /// short transactions of [`super::rollups::EXPIRE_BATCH_ROWS`]; how many events.
    ///
    /// # Errors
    /// Database errors; what was deleted before stays deleted.
    pub async fn expire_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let batch = super::rollups::EXPIRE_BATCH_ROWS;
        let mut total = 0;
        loop {
            let n = on_pool!(self, pool => sqlx::query(
                "DELETE FROM source_events WHERE id IN \
                 (SELECT id FROM source_events WHERE received_at_ms < $1 LIMIT $2)",
            )
            .bind(before_ms)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected());
            total += n;
            if n < batch as u64 {
                break;
            }
        }
        on_pool!(self, pool => sqlx::query("DELETE FROM external_nodes WHERE last_seen_ms < $1")
            .bind(before_ms)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(total)
    }
}
