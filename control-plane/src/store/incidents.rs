//! Verdicts, incidents, notification channels and the outbox as stored.
//!
//! [`Store::record_change`] is the one write that must be atomic: a check's verdict, its
//! transition with evidence, the incident it opens, updates or resolves, the incident's
//! timeline entry and one outbox row per notified channel are committed together or not at
//! all, so a crash can neither lose a notification nor send one for a change that was not
//! stored. Each outbox row's `dedup_key` (`{incident}/{change number}/{channel}`) is unique:
//! writing the same change twice cannot queue it twice.

use serde::Serialize;
use vantage_mqtt::{CheckState, CheckVerdictView, IncidentChange, IncidentSubject, IncidentView};

use super::{BeginWrite, Store, StoreError, on_pool};

/// An incident as stored.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct IncidentRow {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub subject: IncidentSubject,
    pub subject_id: String,
    pub title: String,
    pub open: bool,
    /// Opened while something it depends on was down: it notifies nobody.
    pub dependent: bool,
    pub opened_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
    pub acknowledged_at_ms: Option<i64>,
    pub acknowledged_by: Option<String>,
    /// Changes so far (each numbers one change for the dedup keys).
    pub n_changes: i64,
}

impl IncidentRow {
    /// The incident as the `incidents` topic, the live feed and notifications carry it.
    pub fn view(&self, change: IncidentChange, text: &str, at_ms: i64) -> IncidentView {
        IncidentView {
            v: vantage_mqtt::PROTOCOL_VERSION,
            id: self.id.clone(),
            subject: self.subject,
            subject_id: self.subject_id.clone(),
            title: self.title.clone(),
            change,
            text: text.to_owned(),
            open: self.open,
            dependent: self.dependent,
            opened_at_ms: self.opened_at_ms,
            resolved_at_ms: self.resolved_at_ms,
            acknowledged_at_ms: self.acknowledged_at_ms,
            at_ms,
        }
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct IncidentEventRow {
    pub id: i64,
    pub incident_id: String,
    pub at_ms: i64,
    #[sqlx(try_from = "String")]
    pub change: IncidentChange,
    pub text: String,
    pub author: String,
}

/// What a change does to the subject's incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentOp {
    /// Opens an incident, or updates the open one.
    Open { title: String, dependent: bool },
    /// Adds to the open incident's timeline, if there is one.
    Update,
    /// Resolves the open incident, if there is one.
    Resolve,
}

/// A change to a subject's incident.
#[derive(Debug, Clone)]
pub struct IncidentRequest {
    pub subject: IncidentSubject,
    pub subject_id: String,
    pub op: IncidentOp,
    pub text: String,
    pub at_ms: i64,
    /// Channels to notify of an opening or a resolution (never of an update, never for a
    /// dependent incident).
    pub channels: Vec<String>,
}

/// A verdict to store: the new view and, when the state changed, the transition.
#[derive(Debug, Clone)]
pub struct VerdictWrite<'a> {
    pub previous: CheckState,
    pub next: &'a CheckVerdictView,
}

/// What [`Store::record_change`] did to an incident.
#[derive(Debug, Clone)]
pub struct IncidentOutcome {
    pub incident: IncidentRow,
    pub change: IncidentChange,
    pub text: String,
    /// Outbox rows queued.
    pub n_queued: usize,
}

/// A notification channel as stored; `config` holds its secrets.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub config: String,
    pub enabled: bool,
    /// Reminders every this many seconds while an incident stays open and unacknowledged
    /// (0: none).
    pub reminder_s: i64,
    /// Deliveries per hour at most; more wait their turn (0: no limit).
    pub max_per_hour: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// State of an outbox row.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    Pending,
    Delivered,
    /// Gave up after its attempts: a dead letter, kept and listed.
    Dead,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Dead => "dead",
        }
    }
}

/// A stored outbox state name that is not one of [`OutboxState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outbox state {0:?}")]
pub struct UnknownOutboxState(pub String);

impl TryFrom<String> for OutboxState {
    type Error = UnknownOutboxState;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.as_str() {
            "pending" => Ok(OutboxState::Pending),
            "delivered" => Ok(OutboxState::Delivered),
            "dead" => Ok(OutboxState::Dead),
            _ => Err(UnknownOutboxState(name)),
        }
    }
}

/// One notification in the outbox.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct OutboxRow {
    pub id: i64,
    /// Unique per (incident change, channel); sent as the idempotency key.
    pub dedup_key: String,
    pub incident_id: String,
    pub channel_id: String,
    #[sqlx(try_from = "String")]
    pub change: IncidentChange,
    /// JSON of the [`IncidentView`] to deliver.
    pub body: String,
    #[sqlx(try_from = "String")]
    pub state: OutboxState,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: String,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// The tables that hold definitions as JSON (fixed names: never from input).
#[derive(Debug, Clone, Copy)]
enum DefinitionTable {
    Maintenance,
    Rules,
}

impl DefinitionTable {
    fn name(self) -> &'static str {
        match self {
            DefinitionTable::Maintenance => "maintenance_windows",
            DefinitionTable::Rules => "metric_rules",
        }
    }

    fn what(self) -> &'static str {
        match self {
            DefinitionTable::Maintenance => "maintenance window",
            DefinitionTable::Rules => "rule",
        }
    }
}

/// Rows per multi-row verdict or transition statement (6 binds each at most, well under
/// both engines' bind limits).
const VERDICT_CHUNK_ROWS: usize = 1000;

pub(crate) const INCIDENT_COLUMNS: &str = "SELECT id, subject, subject_id, title, open, dependent, opened_at_ms, \
    resolved_at_ms, acknowledged_at_ms, acknowledged_by, n_changes FROM incidents";
const OUTBOX_COLUMNS: &str = "SELECT id, dedup_key, incident_id, channel_id, change, body, state, \
    attempts, next_attempt_at_ms, last_error, created_at_ms, delivered_at_ms FROM outbox";
const CHANNEL_COLUMNS: &str = "SELECT id, name, kind, config, enabled, reminder_s, max_per_hour, \
    created_at_ms, updated_at_ms FROM channels";

/// Applies one [`IncidentRequest`] inside the open transaction `$tx` (of either backend):
/// opens, updates or resolves the subject's incident, adds the timeline entry and queues one
/// outbox row per channel for an opening or a resolution. Evaluates to the
/// `Option<IncidentOutcome>`; a database error returns from the enclosing function.
macro_rules! apply_incident {
    ($tx:ident, $request:ident) => {{
        let mut outcome: Option<$crate::store::IncidentOutcome> = None;
        let open: Option<$crate::store::IncidentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{} WHERE subject = $1 AND subject_id = $2 AND open", $crate::store::incidents::INCIDENT_COLUMNS)))
        .bind($request.subject.as_str())
        .bind(&$request.subject_id)
        .fetch_optional(&mut *$tx)
        .await?;
        let step = match (&$request.op, open) {
            ($crate::store::IncidentOp::Open { title, dependent }, None) => {
                let id = $crate::store::random_id("in-", 8);
                sqlx::query(
                    "INSERT INTO incidents (id, subject, subject_id, title, open, dependent, opened_at_ms, n_changes) \
                     VALUES ($1, $2, $3, $4, TRUE, $5, $6, 1)",
                )
                .bind(&id)
                .bind($request.subject.as_str())
                .bind(&$request.subject_id)
                .bind(title)
                .bind(*dependent)
                .bind($request.at_ms)
                .execute(&mut *$tx)
                .await?;
                Some((id, vantage_mqtt::IncidentChange::Opened))
            }
            ($crate::store::IncidentOp::Open { .. } | $crate::store::IncidentOp::Update, Some(open)) => {
                sqlx::query("UPDATE incidents SET n_changes = n_changes + 1 WHERE id = $1")
                    .bind(&open.id)
                    .execute(&mut *$tx)
                    .await?;
                Some((open.id, vantage_mqtt::IncidentChange::Updated))
            }
            ($crate::store::IncidentOp::Resolve, Some(open)) => {
                sqlx::query(
                    "UPDATE incidents SET open = FALSE, resolved_at_ms = $2, n_changes = n_changes + 1 WHERE id = $1",
                )
                .bind(&open.id)
                .bind($request.at_ms)
                .execute(&mut *$tx)
                .await?;
                Some((open.id, vantage_mqtt::IncidentChange::Resolved))
            }
            ($crate::store::IncidentOp::Update | $crate::store::IncidentOp::Resolve, None) => None,
        };
        if let Some((id, change)) = step {
            sqlx::query(
                "INSERT INTO incident_events (incident_id, at_ms, change, text, author) VALUES ($1, $2, $3, $4, '')",
            )
            .bind(&id)
            .bind($request.at_ms)
            .bind(change.as_str())
            .bind(&$request.text)
            .execute(&mut *$tx)
            .await?;
            let row: $crate::store::IncidentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!("{} WHERE id = $1", $crate::store::incidents::INCIDENT_COLUMNS)))
                .bind(&id)
                .fetch_one(&mut *$tx)
                .await?;
            let mut n_queued = 0;
            let notify = matches!(change, vantage_mqtt::IncidentChange::Opened | vantage_mqtt::IncidentChange::Resolved);
            if notify && !row.dependent {
                let body = serde_json::to_string(&row.view(change, &$request.text, $request.at_ms))
                    .unwrap_or_default();
                for channel in &$request.channels {
                    sqlx::query(
                        "INSERT INTO outbox (dedup_key, incident_id, channel_id, change, body, state, attempts, \
                         next_attempt_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) \
                         ON CONFLICT (dedup_key) DO NOTHING",
                    )
                    .bind(format!("{}/{}/{channel}", row.id, row.n_changes))
                    .bind(&row.id)
                    .bind(channel)
                    .bind(change.as_str())
                    .bind(&body)
                    .bind($request.at_ms)
                    .execute(&mut *$tx)
                    .await?;
                    n_queued += 1;
                }
            }
            outcome = Some($crate::store::IncidentOutcome {
                incident: row,
                change,
                text: $request.text.clone(),
                n_queued,
            });
        }
        outcome
    }};
}
pub(crate) use apply_incident;

impl Store {
    /// Stores a verdict and/or an incident change, with the transition, the timeline entry
    /// and the outbox rows they cause, in one transaction.
    ///
    /// # Errors
    /// Database errors; then nothing was written.
    pub async fn record_change(
        &self,
        verdict: Option<VerdictWrite<'_>>,
        incident: Option<&IncidentRequest>,
    ) -> Result<Option<IncidentOutcome>, StoreError> {
        Ok(self
            .record_changes(&[(verdict, incident)])
            .await?
            .pop()
            .flatten())
    }

    /// [`Self::record_change`] for many changes in one transaction (a burst of verdicts
    /// pays one commit); the outcomes come back in the same order.
    ///
    /// # Errors
    /// Database errors; then nothing was written.
    pub async fn record_changes(
        &self,
        changes: &[(Option<VerdictWrite<'_>>, Option<&IncidentRequest>)],
    ) -> Result<Vec<Option<IncidentOutcome>>, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut outcomes = Vec::with_capacity(changes.len());
            // Verdicts and transitions as multi-row statements: a burst of thousands of
            // changes costs a few statements, not two per change.
            // One row per check (the last change wins): a multi-row upsert may not touch
            // a row twice.
            let mut seen = std::collections::HashSet::new();
            let mut verdicts: Vec<(&CheckVerdictView, String)> = changes
                .iter()
                .rev()
                .filter_map(|(verdict, _)| verdict.as_ref())
                .filter(|v| seen.insert(v.next.check_id.as_str()))
                .map(|v| (v.next, serde_json::to_string(v.next).unwrap_or_default()))
                .collect();
            verdicts.reverse();
            for chunk in verdicts.chunks(VERDICT_CHUNK_ROWS) {
                let mut query = sqlx::QueryBuilder::new(
                    "INSERT INTO check_verdicts (check_id, state, since_ms, view) ",
                );
                query.push_values(chunk, |mut row, (next, view)| {
                    row.push_bind(next.check_id.as_str())
                        .push_bind(next.state.as_str())
                        .push_bind(next.since_ms)
                        .push_bind(view.as_str());
                });
                query.push(
                    " ON CONFLICT (check_id) DO UPDATE SET state = excluded.state, \
                     since_ms = excluded.since_ms, view = excluded.view",
                );
                query.build().execute(&mut *tx).await?;
            }
            let transitions: Vec<(&str, &CheckVerdictView, String)> = changes
                .iter()
                .filter_map(|(verdict, _)| verdict.as_ref())
                .filter(|v| v.previous != v.next.state)
                .map(|v| {
                    (
                        v.previous.as_str(),
                        v.next,
                        serde_json::to_string(&v.next.regions).unwrap_or_default(),
                    )
                })
                .collect();
            for chunk in transitions.chunks(VERDICT_CHUNK_ROWS) {
                let mut query = sqlx::QueryBuilder::new(
                    "INSERT INTO verdict_transitions (check_id, from_state, to_state, at_ms, reason, evidence) ",
                );
                query.push_values(chunk, |mut row, (previous, next, evidence)| {
                    row.push_bind(next.check_id.as_str())
                        .push_bind(*previous)
                        .push_bind(next.state.as_str())
                        .push_bind(next.since_ms)
                        .push_bind(next.reason.as_str())
                        .push_bind(evidence.as_str());
                });
                query.build().execute(&mut *tx).await?;
            }
            for (_, incident) in changes {
                let outcome = match *incident {
                    Some(request) => apply_incident!(tx, request),
                    None => None,
                };
            outcomes.push(outcome);
            }
            tx.commit().await?;
            Ok(outcomes)
        })
    }

    /// A check's stored verdict.
    ///
    /// # Errors
    /// Database errors, or a stored view that does not decode.
    pub async fn get_verdict(
        &self,
        check_id: &str,
    ) -> Result<Option<CheckVerdictView>, StoreError> {
        let sql = "SELECT view FROM check_verdicts WHERE check_id = $1";
        let view: Option<String> = on_pool!(self, pool => sqlx::query_scalar(sql).bind(check_id).fetch_optional(pool).await?);
        view.map(|text| {
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                what: "verdict",
                detail: format!("{check_id}: {e}"),
            })
        })
        .transpose()
    }

    /// Every stored verdict that decodes (a corrupt one is logged and left out).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_verdicts(&self) -> Result<Vec<CheckVerdictView>, StoreError> {
        let sql = "SELECT view FROM check_verdicts ORDER BY check_id";
        let views: Vec<String> =
            on_pool!(self, pool => sqlx::query_scalar(sql).fetch_all(pool).await?);
        Ok(views
            .iter()
            .filter_map(|text| match serde_json::from_str(text) {
                Ok(view) => Some(view),
                Err(error) => {
                    tracing::error!(%error, "Stored verdict does not decode; left out");
                    None
                }
            })
            .collect())
    }

    /// A check's transitions, newest first: (from, to, at_ms, reason, evidence JSON).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_transitions(
        &self,
        check_id: &str,
        limit: i64,
    ) -> Result<Vec<TransitionRow>, StoreError> {
        let sql = "SELECT from_state, to_state, at_ms, reason, evidence FROM verdict_transitions \
                   WHERE check_id = $1 ORDER BY id DESC LIMIT $2";
        Ok(
            on_pool!(self, pool => sqlx::query_as(sql).bind(check_id).bind(limit).fetch_all(pool).await?),
        )
    }

    /// The stored verdicts of `ids` that exist and decode (a corrupt one is logged and left
    /// out), by check id.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn get_verdicts(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, CheckVerdictView>, StoreError> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(super::IN_LIST_CHUNK) {
            let rows: Vec<(String, String)> = on_pool!(self, pool => {
                let mut query = sqlx::QueryBuilder::new(
                    "SELECT check_id, view FROM check_verdicts WHERE check_id IN (",
                );
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(")");
                query.build_query_as().fetch_all(pool).await?
            });
            for (id, text) in rows {
                match serde_json::from_str(&text) {
                    Ok(view) => {
                        out.insert(id, view);
                    }
                    Err(error) => {
                        tracing::error!(check = %id, %error, "Stored verdict does not decode; left out");
                    }
                }
            }
        }
        Ok(out)
    }

    /// The results of the checks `ids` measured at or after `since_ms`, newest first.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn results_since(
        &self,
        ids: &[&str],
        since_ms: i64,
    ) -> Result<Vec<super::ResultRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(super::IN_LIST_CHUNK) {
            let rows: Vec<super::ResultRow> = on_pool!(self, pool => {
                let mut query = sqlx::QueryBuilder::new(
                    "SELECT agent_id, seq, check_id, region, measured_at_ms, received_at_ms, ok, total_ms, \
                     status_code, reason, dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, result_values FROM results WHERE measured_at_ms >= ",
                );
                query
                    .push_bind(since_ms)
                    .push(" AND day_ms >= ")
                    .push_bind(super::packs::day_start(since_ms))
                    .push(" AND check_id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(") ORDER BY measured_at_ms DESC, agent_id DESC, seq DESC");
                query.build_query_as().fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Incidents, newest first; only the open ones when `open_only`.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_incidents(
        &self,
        open_only: bool,
        limit: i64,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let filter = if open_only { "WHERE open" } else { "" };
        let sql = format!("{INCIDENT_COLUMNS} {filter} ORDER BY opened_at_ms DESC, id LIMIT $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(pool).await?),
        )
    }

    /// Incidents of the checks `check_ids` opened or still open since `since_ms`, newest
    /// first, at most `limit` (what a status page lists).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn check_incidents_since(
        &self,
        check_ids: &[String],
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let mut out: Vec<IncidentRow> = Vec::new();
        for chunk in check_ids.chunks(super::IN_LIST_CHUNK) {
            let rows: Vec<IncidentRow> = on_pool!(self, pool => {
                let mut query = sqlx::QueryBuilder::new(INCIDENT_COLUMNS);
                query
                    .push(" WHERE subject = 'check' AND (open OR opened_at_ms >= ")
                    .push_bind(since_ms)
                    .push(") AND subject_id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(id.as_str());
                }
                query
                    .push(") ORDER BY opened_at_ms DESC, id LIMIT ")
                    .push_bind(limit);
                query.build_query_as().fetch_all(pool).await?
            });
            out.extend(rows);
        }
        out.sort_by(|a, b| {
            b.opened_at_ms
                .cmp(&a.opened_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(out)
    }

    /// One incident.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn get_incident(&self, id: &str) -> Result<Option<IncidentRow>, StoreError> {
        let sql = format!("{INCIDENT_COLUMNS} WHERE id = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?),
        )
    }

    /// The open incident of a subject.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn open_incident(
        &self,
        subject: IncidentSubject,
        subject_id: &str,
    ) -> Result<Option<IncidentRow>, StoreError> {
        let sql = format!("{INCIDENT_COLUMNS} WHERE subject = $1 AND subject_id = $2 AND open");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(subject.as_str()).bind(subject_id).fetch_optional(pool).await?),
        )
    }

    /// An incident's timeline, oldest first.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn incident_events(&self, id: &str) -> Result<Vec<IncidentEventRow>, StoreError> {
        let sql = "SELECT id, incident_id, at_ms, change, text, author FROM incident_events \
                   WHERE incident_id = $1 ORDER BY id";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).bind(id).fetch_all(pool).await?))
    }

    /// Acknowledges an incident (once; later calls change nothing) or adds a note, with its
    /// timeline entry. Returns the incident after the change, `None` when it does not exist.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn annotate_incident(
        &self,
        id: &str,
        change: IncidentChange,
        text: &str,
        author: &str,
        at_ms: i64,
    ) -> Result<Option<IncidentRow>, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = if change == IncidentChange::Acknowledged {
                sqlx::query(
                    "UPDATE incidents SET acknowledged_at_ms = COALESCE(acknowledged_at_ms, $2), \
                     acknowledged_by = COALESCE(acknowledged_by, $3), n_changes = n_changes + 1 WHERE id = $1",
                )
                .bind(id)
                .bind(at_ms)
                .bind(author)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query("UPDATE incidents SET n_changes = n_changes + 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            };
            if n == 0 {
                return Ok(None);
            }
            sqlx::query(
                "INSERT INTO incident_events (incident_id, at_ms, change, text, author) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(at_ms)
            .bind(change.as_str())
            .bind(text)
            .bind(author)
            .execute(&mut *tx)
            .await?;
            let row: IncidentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!("{INCIDENT_COLUMNS} WHERE id = $1")))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(row))
        })
    }

    // ---- channels --------------------------------------------------------------------------

    /// Inserts or replaces a channel.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn upsert_channel(&self, channel: &ChannelRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO channels (id, name, kind, config, enabled, created_at_ms, updated_at_ms, \
                   reminder_s, max_per_hour) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                   ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                   kind = excluded.kind, config = excluded.config, enabled = excluded.enabled, \
                   updated_at_ms = excluded.updated_at_ms, reminder_s = excluded.reminder_s, \
                   max_per_hour = excluded.max_per_hour";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&channel.id)
            .bind(&channel.name)
            .bind(&channel.kind)
            .bind(&channel.config)
            .bind(channel.enabled)
            .bind(channel.created_at_ms)
            .bind(channel.updated_at_ms)
            .bind(channel.reminder_s)
            .bind(channel.max_per_hour)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Every channel.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_channels(&self) -> Result<Vec<ChannelRow>, StoreError> {
        let sql = format!("{CHANNEL_COLUMNS} ORDER BY id");
        Ok(on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?))
    }

    /// One channel.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn get_channel(&self, id: &str) -> Result<Option<ChannelRow>, StoreError> {
        let sql = format!("{CHANNEL_COLUMNS} WHERE id = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?),
        )
    }

    /// Deletes a channel; returns whether it existed. Its pending notifications become dead
    /// letters when the sender next looks at them.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delete_channel(&self, id: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM channels WHERE id = $1";
        let n =
            on_pool!(self, pool => sqlx::query(sql).bind(id).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    // ---- maintenance windows and host-metric rules ---------------------------------------
    // Both are stored the same way: an id, a name and the definition as JSON.

    /// Inserts a definition row into `table`.
    async fn insert_definition(
        &self,
        table: DefinitionTable,
        id: &str,
        name: &str,
        definition: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {} (id, name, definition, created_at_ms) VALUES ($1, $2, $3, $4)",
            table.name()
        );
        let outcome = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(name)
            .bind(definition)
            .bind(at_ms)
            .execute(pool)
            .await
            .map(|_| ()));
        match outcome {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict {
                what: table.what(),
                id: id.to_owned(),
            }),
            other => Ok(other?),
        }
    }

    /// Every row of `table`: (id, definition JSON).
    async fn list_definitions(
        &self,
        table: DefinitionTable,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let sql = format!("SELECT id, definition FROM {} ORDER BY id", table.name());
        Ok(on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?))
    }

    /// Deletes a row of `table`; returns whether it existed.
    async fn delete_definition(
        &self,
        table: DefinitionTable,
        id: &str,
    ) -> Result<bool, StoreError> {
        let sql = format!("DELETE FROM {} WHERE id = $1", table.name());
        let n = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Inserts a maintenance window (its definition as JSON).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id is taken.
    pub async fn insert_maintenance(
        &self,
        id: &str,
        name: &str,
        definition: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.insert_definition(DefinitionTable::Maintenance, id, name, definition, at_ms)
            .await
    }

    /// Every maintenance window: (id, definition JSON).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_maintenance(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.list_definitions(DefinitionTable::Maintenance).await
    }

    /// Deletes a maintenance window; returns whether it existed.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delete_maintenance(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_definition(DefinitionTable::Maintenance, id)
            .await
    }

    /// Inserts a host-metric rule (its definition as JSON).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id is taken.
    pub async fn insert_rule(
        &self,
        id: &str,
        name: &str,
        definition: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.insert_definition(DefinitionTable::Rules, id, name, definition, at_ms)
            .await
    }

    /// Every host-metric rule: (id, definition JSON).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_rules(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.list_definitions(DefinitionTable::Rules).await
    }

    /// Deletes a host-metric rule; returns whether it existed.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delete_rule(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_definition(DefinitionTable::Rules, id).await
    }

    // ---- outbox ----------------------------------------------------------------------------

    /// Queues one notification (a reminder); a repeated dedup key queues nothing. Returns
    /// whether a row was added.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn queue_notification(
        &self,
        dedup_key: &str,
        incident_id: &str,
        channel_id: &str,
        change: IncidentChange,
        body: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = "INSERT INTO outbox (dedup_key, incident_id, channel_id, change, body, state, attempts, \
                   next_attempt_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) \
                   ON CONFLICT (dedup_key) DO NOTHING";
        let n = on_pool!(self, pool => sqlx::query(sql)
            .bind(dedup_key)
            .bind(incident_id)
            .bind(channel_id)
            .bind(change.as_str())
            .bind(body)
            .bind(at_ms)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// When each channel was last given a notification of an incident: (channel, ms).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn last_notified(&self, incident_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT channel_id, MAX(created_at_ms) FROM outbox WHERE incident_id = $1 GROUP BY channel_id";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).bind(incident_id).fetch_all(pool).await?))
    }

    /// Notifications a channel delivered since `since_ms`.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delivered_since(
        &self,
        channel_id: &str,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM outbox WHERE channel_id = $1 AND state = 'delivered' AND delivered_at_ms >= $2";
        Ok(
            on_pool!(self, pool => sqlx::query_scalar(sql).bind(channel_id).bind(since_ms).fetch_one(pool).await?),
        )
    }

    /// Moves a pending notification's next attempt without counting an attempt (a channel
    /// over its rate).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn postpone(&self, id: i64, next_attempt_at_ms: i64) -> Result<(), StoreError> {
        let sql = "UPDATE outbox SET next_attempt_at_ms = $2 WHERE id = $1 AND state = 'pending'";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(next_attempt_at_ms).execute(pool).await?.rows_affected());
        Ok(())
    }

    /// Pending notifications due by `now_ms`, oldest first, at most one per (incident,
    /// channel): the oldest pending one, so a resolve never overtakes its alert.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn due_outbox(&self, now_ms: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = format!(
            "{OUTBOX_COLUMNS} o WHERE state = 'pending' AND next_attempt_at_ms <= $1 AND id = \
             (SELECT MIN(p.id) FROM outbox p WHERE p.state = 'pending' AND p.incident_id = o.incident_id \
             AND p.channel_id = o.channel_id) ORDER BY id LIMIT $2"
        );
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(now_ms).bind(limit).fetch_all(pool).await?),
        )
    }

    /// The earliest time a pending notification is due, if any is pending.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn next_outbox_due(&self) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT MIN(next_attempt_at_ms) FROM outbox WHERE state = 'pending'";
        Ok(on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await?))
    }

    /// Records a delivery attempt's outcome: delivered, retried at `next_attempt_at_ms`, or
    /// dead.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn record_attempt(
        &self,
        id: i64,
        state: OutboxState,
        next_attempt_at_ms: i64,
        error: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE outbox SET state = $2, attempts = attempts + 1, next_attempt_at_ms = $3, \
                   last_error = $4, delivered_at_ms = CASE WHEN $2 = 'delivered' THEN $5 ELSE delivered_at_ms END \
                   WHERE id = $1";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(id)
            .bind(state.as_str())
            .bind(next_attempt_at_ms)
            .bind(error)
            .bind(at_ms)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Outbox rows in `state`, newest first.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_outbox(
        &self,
        state: Option<OutboxState>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = match state {
            Some(_) => format!("{OUTBOX_COLUMNS} WHERE state = $2 ORDER BY id DESC LIMIT $1"),
            None => format!("{OUTBOX_COLUMNS} ORDER BY id DESC LIMIT $1"),
        };
        Ok(on_pool!(self, pool => {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(limit);
            match state {
                Some(state) => query.bind(state.as_str()).fetch_all(pool).await?,
                None => query.fetch_all(pool).await?,
            }
        }))
    }
}

/// One stored verdict transition.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct TransitionRow {
    pub from_state: String,
    pub to_state: String,
    pub at_ms: i64,
    pub reason: String,
    /// JSON of the regions' evidence (an array in API answers).
    #[serde(serialize_with = "super::models::as_json")]
    #[schemars(with = "serde_json::Value")]
    pub evidence: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the oldest pending row of an (incident, channel) is handed out, so a resolution
    /// never overtakes its alert; other pairs are not held back by it.
    #[tokio::test]
    async fn a_resolution_waits_for_its_alert() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(None, dir.path()).await.unwrap();
        store.migrate().await.unwrap();
        let queue = |key: &'static str, incident: &'static str, change| {
            let store = store.clone();
            async move {
                assert!(
                    store
                        .queue_notification(key, incident, "ch", change, "{}", 1000)
                        .await
                        .unwrap()
                );
            }
        };
        queue("in-a/1/ch", "in-a", IncidentChange::Opened).await;
        queue("in-a/2/ch", "in-a", IncidentChange::Resolved).await;
        queue("in-b/1/ch", "in-b", IncidentChange::Opened).await;
        // The same key again queues nothing.
        assert!(
            !store
                .queue_notification(
                    "in-a/1/ch",
                    "in-a",
                    "ch",
                    IncidentChange::Opened,
                    "{}",
                    1000
                )
                .await
                .unwrap()
        );
        let keys = |rows: Vec<OutboxRow>| rows.into_iter().map(|r| r.dedup_key).collect::<Vec<_>>();
        assert_eq!(
            keys(store.due_outbox(2000, 10).await.unwrap()),
            ["in-a/1/ch", "in-b/1/ch"]
        );
        // The alert fails and waits: its resolution still waits behind it.
        let alert = store.due_outbox(2000, 1).await.unwrap().remove(0);
        store
            .record_attempt(
                alert.id,
                OutboxState::Pending,
                60_000,
                "receiver answered 500",
                2000,
            )
            .await
            .unwrap();
        assert_eq!(
            keys(store.due_outbox(3000, 10).await.unwrap()),
            ["in-b/1/ch"]
        );
        // Delivered: now the resolution is due.
        store
            .record_attempt(alert.id, OutboxState::Delivered, 60_000, "", 61_000)
            .await
            .unwrap();
        assert_eq!(
            keys(store.due_outbox(61_000, 10).await.unwrap()),
            ["in-a/2/ch", "in-b/1/ch"]
        );
        let delivered = store
            .list_outbox(Some(OutboxState::Delivered), 10)
            .await
            .unwrap();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].attempts, 2);
        assert_eq!(delivered[0].delivered_at_ms, Some(61_000));
        assert_eq!(store.next_outbox_due().await.unwrap(), Some(1000));
    }
}
