//! Bulk, idempotent writes of results, host metrics and events, one transaction per batch.
//!
//! PostgreSQL gets one `INSERT … SELECT FROM UNNEST(arrays) ON CONFLICT DO NOTHING` per table
//! (one cached statement, one round trip, no bind limit), except for result rows that are
//! new for certain (a seq above their agent's stored high-water mark, read with the agents'
//! rows locked): those go in with one `COPY`, which skips the conflict checks. SQLite gets multi-row `VALUES`
//! statements in chunks that stay under its bind-parameter limit, in the same transaction.
//! Rows go to the compact tables (`result_rows`, `metric_rows`): names become the integer
//! keys [`BatchKeys`] resolves (reason and probe-values texts too, each stored once), from
//! the process's [`KeyCache`] where it knows them and in the same transaction otherwise;
//! timings integer microseconds.
//! Replays of rows already stored change nothing: a row sent again has the same primary key
//! (check or agent, measurement time, agent, seq) and conflicts, or, on PostgreSQL, is found
//! in its day's pack (`packs.rs`: only rows measured over an hour ago are looked up there).

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{Postgres, QueryBuilder, Row, Sqlite};
use vantage_mqtt::{CheckResult, HostMetrics};

use super::keys::{BatchKeys, KeyCache};
pub use super::models::IngestBatch;
use super::models::micros;
use super::{BeginWrite, Store, StoreError, rollups};
use crate::rollup::{CheckBucket, MetricBucket, Resolution};
use crate::sketch::{CheckAggregate, GaugeAggregate};

/// The newest result per (check, region) in the batch.
/// Of two results of one (check, region), a later one in the batch wins a tie.
pub fn latest_per_check_region(batch: &IngestBatch) -> Vec<&(String, String, CheckResult)> {
    type Row = (String, String, CheckResult);
    let mut latest: BTreeMap<(&str, &str), &Row> = BTreeMap::new();
    fn keep<'a>(latest: &mut BTreeMap<(&'a str, &'a str), &'a Row>, row: &'a Row) {
        let key = (row.2.check_id.as_str(), row.1.as_str());
        match latest.get(&key) {
            Some(old) if old.2.measured_at_ms > row.2.measured_at_ms => {}
            _ => {
                latest.insert(key, row);
            }
        }
    }
    // The newest of a run of rows of one (check, region) that follow each other goes to the
    // map: one lookup per run, not per row.
    let mut run: Option<&Row> = None;
    for row in &batch.results {
        match run {
            Some(newest) if newest.2.check_id == row.2.check_id && newest.1 == row.1 => {
                if row.2.measured_at_ms >= newest.2.measured_at_ms {
                    run = Some(row);
                }
            }
            _ => {
                if let Some(newest) = run {
                    keep(&mut latest, newest);
                }
                run = Some(row);
            }
        }
    }
    if let Some(newest) = run {
        keep(&mut latest, newest);
    }
    latest.into_values().collect()
}

/// What a newer result of a (check, region) replaces in `check_status`; an older one
/// (a spool replay) changes nothing.
const CHECK_STATUS_CONFLICT: &str = " ON CONFLICT (check_id, region) DO UPDATE SET \
    agent_id = excluded.agent_id, ok = excluded.ok, reason = excluded.reason, total_ms = excluded.total_ms, \
    measured_at_ms = excluded.measured_at_ms WHERE excluded.measured_at_ms >= check_status.measured_at_ms";

/// Upserts the newest result of each (check, region) of a batch into `check_status` in one
/// statement (the pairs are distinct, as a multi-row upsert needs).
async fn upsert_status_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    rows: &[&(String, String, CheckResult)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO check_status (check_id, region, agent_id, ok, reason, total_ms, measured_at_ms) \
         SELECT c, r, a, o, re, t, m FROM UNNEST($1::text[], $2::text[], $3::text[], $4::boolean[], \
         $5::text[], $6::float8[], $7::bigint[]) AS u(c, r, a, o, re, t, m){CHECK_STATUS_CONFLICT}"
    )))
    .bind(rows.iter().map(|(_, _, r)| r.check_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, g, _)| g.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(a, _, _)| a.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, r)| r.ok).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, r)| r.reason.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, r)| r.timings.total_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, r)| r.measured_at_ms).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`upsert_status_postgres`] for SQLite, in multi-row statements.
async fn upsert_status_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    rows: &[&(String, String, CheckResult)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(SQLITE_CHUNK_ROWS) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO check_status (check_id, region, agent_id, ok, reason, total_ms, measured_at_ms) ",
        );
        query.push_values(chunk, |mut row, (agent, region, r)| {
            row.push_bind(r.check_id.as_str())
                .push_bind(region.as_str())
                .push_bind(agent.as_str())
                .push_bind(r.ok)
                .push_bind(r.reason.as_str())
                .push_bind(r.timings.total_ms)
                .push_bind(r.measured_at_ms);
        });
        query.push(CHECK_STATUS_CONFLICT);
        query.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The probe's values as JSON, or nothing when it has none (most probes).
fn values_json(result: &CheckResult) -> Option<String> {
    (!result.values.is_empty())
        .then(|| serde_json::to_string(&result.values).unwrap_or_else(|_| "{}".into()))
}

/// The keys of one result row.
struct ResultKeys {
    check: i64,
    agent: i64,
    region: i64,
    /// The reason's key in `texts`, or `None` when it is kept inline.
    reason: Option<i64>,
    values: Option<i64>,
}

fn result_keys(
    keys: &BatchKeys,
    batch: &IngestBatch,
    values: &[Option<String>],
) -> Result<Vec<ResultKeys>, StoreError> {
    let mut out: Vec<ResultKeys> = Vec::with_capacity(batch.results.len());
    // The previous row: rows of one agent, region and check that follow each other have
    // their keys looked up once per run.
    let mut previous: Option<&(String, String, CheckResult)> = None;
    for (row, values) in batch.results.iter().zip(values) {
        let (agent, region, r) = row;
        let values = values.as_deref().and_then(|v| keys.text(v));
        let same_run = previous
            .zip(out.last())
            .filter(|((a, g, p), _)| a == agent && g == region && p.check_id == r.check_id);
        out.push(match same_run {
            Some(((_, _, p), last)) => ResultKeys {
                check: last.check,
                agent: last.agent,
                region: last.region,
                reason: if p.reason == r.reason {
                    last.reason
                } else {
                    keys.text(&r.reason)
                },
                values,
            },
            None => ResultKeys {
                check: keys.check(&r.check_id)?,
                agent: keys.agent(agent)?,
                region: keys.region(region)?,
                reason: keys.text(&r.reason),
                values,
            },
        });
        previous = Some(row);
    }
    Ok(out)
}

/// (agent, region) keys of each metrics row.
fn metric_keys(keys: &BatchKeys, batch: &IngestBatch) -> Result<Vec<(i64, i64)>, StoreError> {
    batch
        .metrics
        .iter()
        .map(|(agent, region, _)| Ok((keys.agent(agent)?, keys.region(region)?)))
        .collect()
}

fn metrics_detail(m: &HostMetrics) -> String {
    serde_json::json!({ "disks": m.disks, "nets": m.nets, "cores_pct": m.cores_pct }).to_string()
}

fn net_totals(m: &HostMetrics) -> (f64, f64) {
    m.nets.iter().fold((0.0, 0.0), |(rx, tx), n| {
        (rx + n.rx_bytes_per_s, tx + n.tx_bytes_per_s)
    })
}

const SQLITE_CHUNK_ROWS: usize = 1000;

/// The rows of one table a batch did not store because they were there already (replays):
/// they are left out of the rollups, so a row counts once however often it is sent. When
/// every row was new (the usual case) the returned keys are not even decoded.
#[derive(Debug, Default)]
struct Stored {
    /// Per agent, the seqs not stored.
    skipped: HashMap<String, HashSet<i64>>,
}

impl Stored {
    /// Notes what one statement stored (`returned`: its `RETURNING agent_key, seq`) of the
    /// rows it was sent.
    fn note<'a, R: Row>(
        &mut self,
        keys: &BatchKeys,
        returned: Vec<R>,
        sent: impl ExactSizeIterator<Item = (&'a str, u64)>,
    ) -> Result<(), sqlx::Error>
    where
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        if returned.len() == sent.len() {
            return Ok(());
        }
        let mut stored: HashMap<String, HashSet<i64>> = HashMap::new();
        for row in returned {
            let agent = keys.agent_id(row.try_get(0)?).unwrap_or_default();
            stored
                .entry(agent.to_owned())
                .or_default()
                .insert(row.try_get(1)?);
        }
        for (agent, seq) in sent {
            let seq = seq as i64;
            if !stored.get(agent).is_some_and(|s| s.contains(&seq)) {
                self.skipped
                    .entry(agent.to_owned())
                    .or_default()
                    .insert(seq);
            }
        }
        Ok(())
    }

    fn holds(&self, agent: &str, seq: u64) -> bool {
        !self
            .skipped
            .get(agent)
            .is_some_and(|s| s.contains(&(seq as i64)))
    }
}

/// What a batch stored, per table.
#[derive(Debug, Default)]
struct Fresh {
    results: Stored,
    metrics: Stored,
    /// The keys the batch's rows were stored under, for its rollups.
    keys: BatchKeys,
}

impl Fresh {
    fn check_rollups(
        &self,
        batch: &IngestBatch,
        resolution: Resolution,
    ) -> BTreeMap<CheckBucket, CheckAggregate> {
        let stored = batch
            .results
            .iter()
            .filter(|(agent, _, r)| self.results.holds(agent, r.seq))
            .map(|(_, region, r)| (region.as_str(), r));
        crate::rollup::check_rollups(stored, resolution)
    }

    fn metric_rollups(
        &self,
        batch: &IngestBatch,
        resolution: Resolution,
    ) -> BTreeMap<MetricBucket, GaugeAggregate> {
        let stored = batch
            .metrics
            .iter()
            .filter(|(agent, _, m)| self.metrics.holds(agent, m.seq))
            .map(|(agent, _, m)| (agent.as_str(), m));
        crate::rollup::metric_rollups(stored, resolution)
    }
}

impl Store {
    /// Commits every row of `batch` in one transaction, ignoring rows already stored, and
    /// raises each agent's committed high-water mark. Keys of names and texts come from
    /// `cache` where it knows them, and what the store gave is added to it after the commit.
    ///
    /// # Errors
    /// Database errors; nothing of the batch is committed then.
    pub async fn commit_batch(
        &self,
        batch: &IngestBatch,
        cache: &KeyCache,
    ) -> Result<(), StoreError> {
        let max_seqs = batch.max_seq_per_agent();
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                let mut fresh = commit_postgres(&mut tx, batch, cache).await?;
                for resolution in Resolution::ALL {
                    let adds = fresh.check_rollups(batch, resolution);
                    if resolution == Resolution::Hour {
                        rollups::merge_days_postgres(
                            &mut tx,
                            &fresh.keys,
                            crate::rollup::day_counts(&adds),
                        )
                        .await?;
                    }
                    rollups::merge_checks_postgres(&mut tx, &fresh.keys, resolution, adds).await?;
                    rollups::merge_metrics_postgres(
                        &mut tx,
                        &fresh.keys,
                        resolution,
                        fresh.metric_rollups(batch, resolution),
                    )
                    .await?;
                }
                upsert_status_postgres(&mut tx, &latest_per_check_region(batch)).await?;
                sqlx::query(
                    "UPDATE agents SET last_seq = GREATEST(agents.last_seq, u.s) \
                     FROM UNNEST($1::text[], $2::bigint[]) AS u(a, s) WHERE agents.id = u.a",
                )
                .bind(max_seqs.keys().map(String::as_str).collect::<Vec<_>>())
                .bind(max_seqs.values().map(|s| *s as i64).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                cache.learn(std::mem::take(&mut fresh.keys.learned));
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                let mut fresh = commit_sqlite(&mut tx, batch, cache).await?;
                for resolution in Resolution::ALL {
                    let adds = fresh.check_rollups(batch, resolution);
                    if resolution == Resolution::Hour {
                        rollups::merge_days_sqlite(
                            &mut tx,
                            &fresh.keys,
                            crate::rollup::day_counts(&adds),
                        )
                        .await?;
                    }
                    rollups::merge_checks_sqlite(&mut tx, &fresh.keys, resolution, adds).await?;
                    rollups::merge_metrics_sqlite(
                        &mut tx,
                        &fresh.keys,
                        resolution,
                        fresh.metric_rollups(batch, resolution),
                    )
                    .await?;
                }
                upsert_status_sqlite(&mut tx, &latest_per_check_region(batch)).await?;
                for (agent, seq) in &max_seqs {
                    sqlx::query("UPDATE agents SET last_seq = MAX(last_seq, $2) WHERE id = $1")
                        .bind(agent)
                        .bind(*seq as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                cache.learn(std::mem::take(&mut fresh.keys.learned));
            }
        }
        Ok(())
    }
}

/// Locks the batch's agents' rows in id order, as grouped heartbeats and the start-up
/// `mark_all_offline` do (no deadlock between replicas, heartbeats and ingest), with `FOR NO
/// KEY UPDATE` as the plain `UPDATE` of the marks would take (it does not block the
/// foreign keys of assignment rows), and reads their stored high-water marks: no row of an
/// agent with a seq above its mark can be stored yet, and no other replica's commit can
/// store one until this one ends.
async fn lock_marks_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    batch: &IngestBatch,
) -> Result<HashMap<String, i64>, StoreError> {
    let mut previous = None;
    let agents: Vec<&str> = batch
        .results
        .iter()
        .map(|(a, _, _)| a.as_str())
        .chain(batch.metrics.iter().map(|(a, _, _)| a.as_str()))
        .chain(batch.events.iter().map(|(a, _, _)| a.as_str()))
        // Rows come in runs of one agent: the set sees each run once.
        .filter(|a| previous.replace(*a) != Some(*a))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, last_seq FROM agents WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&agents)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Splits rows (agent, seq) into those new for certain — a seq above the agent's stored
/// mark (`marks`), the first of its (agent, seq) in the batch — and the rest, which may be
/// stored already (a resend, a replay, a row of an agent without a mark such as the
/// fallback executor's): indexes into the rows.
fn new_for_certain<'a>(
    marks: &HashMap<String, i64>,
    rows: impl Iterator<Item = (&'a String, u64)>,
) -> (Vec<usize>, Vec<usize>) {
    /// One agent's stored mark and the highest seq of it taken as new so far.
    struct Agent {
        mark: Option<i64>,
        highest: Option<u64>,
    }
    let mut agents: Vec<Agent> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    // The agent of the previous row: a batch's rows come in runs of one agent (its
    // messages), which then cost one map lookup per run, not per row.
    let mut run: Option<(&str, usize)> = None;
    // Every (agent, seq) taken as new, and the set of them, made only when a seq of an agent
    // comes at or below one of its seqs already taken (a resend within the batch, or rows out
    // of order): above them, a seq cannot have been taken yet.
    let mut taken: Vec<(usize, u64)> = Vec::new();
    let mut seen: Option<HashSet<(usize, u64)>> = None;
    let (mut new, mut maybe_stored) = (Vec::new(), Vec::new());
    for (i, (agent, seq)) in rows.enumerate() {
        let a = match run {
            Some((name, a)) if name == agent.as_str() => a,
            _ => {
                let a = *index.entry(agent.as_str()).or_insert_with(|| {
                    agents.push(Agent {
                        mark: marks.get(agent).copied(),
                        highest: None,
                    });
                    agents.len() - 1
                });
                run = Some((agent.as_str(), a));
                a
            }
        };
        let state = &mut agents[a];
        let above = state
            .mark
            .is_some_and(|mark| i64::try_from(seq).is_ok_and(|seq| seq > mark));
        let first = if !above {
            false
        } else if state.highest.is_none_or(|highest| seq > highest) {
            seen.as_mut().map(|seen| seen.insert((a, seq)));
            true
        } else {
            seen.get_or_insert_with(|| taken.iter().copied().collect())
                .insert((a, seq))
        };
        if first {
            state.highest = state.highest.max(Some(seq));
            if seen.is_none() {
                taken.push((a, seq));
            }
            new.push(i);
        } else {
            maybe_stored.push(i);
        }
    }
    (new, maybe_stored)
}

/// Appends `text` to a `COPY … (FORMAT text)` line, escaped.
fn copy_text(line: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c => line.push(c),
        }
    }
}

/// Appends one integer field (`None`: NULL) and a tab to a COPY line (`itoa`: the `fmt`
/// machinery cost a twentieth of ingest's CPU here).
fn copy_field<I: itoa::Integer>(line: &mut String, value: Option<I>) {
    match value {
        Some(value) => line.push_str(itoa::Buffer::new().format(value)),
        None => line.push_str("\\N"),
    }
    line.push('\t');
}

/// Stores the result rows `new` (indexes into the batch, new for certain: see
/// [`new_for_certain`]) with one `COPY`, which skips the conflict checks an insert of rows
/// that may be stored needs.
async fn copy_results_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    batch: &IngestBatch,
    rk: &[ResultKeys],
    values: &[Option<String>],
    new: &[usize],
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    let mut data = String::with_capacity(new.len() * 96);
    for &i in new {
        let (_, _, r) = &batch.results[i];
        let k = &rk[i];
        let t = &r.timings;
        let timing = |v: Option<f64>| v.map(micros);
        let d = &mut data;
        copy_field(d, Some(r.measured_at_ms));
        copy_field(d, Some(r.seq));
        copy_field(d, Some(batch.received_at_ms));
        copy_field(d, Some(k.check));
        copy_field(d, Some(k.agent));
        copy_field(d, Some(k.region));
        copy_field(d, k.reason);
        copy_field(d, Some(micros(t.total_ms)));
        for v in [t.dns_ms, t.connect_ms, t.tls_ms, t.ttfb_ms, t.transfer_ms] {
            copy_field(d, timing(v));
        }
        copy_field(d, r.status_code);
        d.push_str(if r.ok { "t\t" } else { "f\t" });
        copy_field(d, k.values);
        match k.reason {
            None => {
                copy_text(d, &r.reason);
                d.push('\t');
            }
            Some(_) => d.push_str("\\N\t"),
        }
        match values[i].as_deref().filter(|_| k.values.is_none()) {
            Some(v) => {
                copy_text(d, v);
                d.push('\n');
            }
            None => d.push_str("\\N\n"),
        }
    }
    let mut copy = tx
        .copy_in_raw(
            "COPY result_rows (measured_at_ms, seq, received_at_ms, check_key, agent_key, region_key, \
             reason_key, total_us, dns_us, connect_us, tls_us, ttfb_us, transfer_us, status_code, ok, \
             values_key, reason, result_values) FROM STDIN (FORMAT text)",
        )
        .await?;
    if let Err(error) = copy.send(data.into_bytes()).await {
        let _ = copy.abort("ingest could not send its rows").await;
        return Err(error.into());
    }
    copy.finish().await?;
    Ok(())
}

async fn commit_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    batch: &IngestBatch,
    cache: &KeyCache,
) -> Result<Fresh, StoreError> {
    let received = batch.received_at_ms;
    let mut fresh = Fresh::default();
    // Rows this old may belong to a day being packed (packs.rs): wait for packing to finish,
    // then skip those already in their day's pack. Newer rows skip the check.
    let careful_before = super::now_ms() - super::packs::CAREFUL_AFTER_MS;
    let careful = batch
        .results
        .iter()
        .any(|(_, _, r)| r.measured_at_ms < careful_before)
        || batch
            .metrics
            .iter()
            .any(|(_, _, m)| m.measured_at_ms < careful_before);
    if careful {
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(super::packs::PACK_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    let values: Vec<Option<String>> = batch
        .results
        .iter()
        .map(|(_, _, r)| values_json(r))
        .collect();
    let keys = BatchKeys::resolve_postgres(tx, batch, &values, cache).await?;
    let marks = lock_marks_postgres(tx, batch).await?;
    if !batch.results.is_empty() {
        let rows = &batch.results;
        let rk = result_keys(&keys, batch, &values)?;
        let (new, maybe_stored) = new_for_certain(&marks, rows.iter().map(|(a, _, r)| (a, r.seq)));
        copy_results_postgres(tx, batch, &rk, &values, &new).await?;
        if !maybe_stored.is_empty() {
            let pick = |f: &dyn Fn(usize) -> Option<i64>| {
                maybe_stored.iter().map(|&i| f(i)).collect::<Vec<_>>()
            };
            let timing = |f: fn(&vantage_mqtt::Timings) -> Option<f64>| {
                pick(&|i| f(&rows[i].2.timings).map(micros))
            };
            let stored = sqlx::query(
                "INSERT INTO result_rows (measured_at_ms, seq, received_at_ms, check_key, agent_key, region_key, \
                 reason_key, total_us, dns_us, connect_us, tls_us, ttfb_us, transfer_us, status_code, ok, \
                 values_key, reason, result_values) \
                 SELECT m, s, $3, c, a, g, re, t, d1, d2, d3, d4, d5, sc, o, va, rt, vt FROM UNNEST($1::bigint[], \
                 $2::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], \
                 $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], \
                 $15::boolean[], $16::bigint[], $17::text[], $18::text[]) \
                 AS u(m, s, c, a, g, re, t, d1, d2, d3, d4, d5, sc, o, va, rt, vt) \
                 WHERE u.m >= $19 OR NOT EXISTS (SELECT 1 FROM result_packs p WHERE p.check_key = u.c \
                 AND p.day_ms = u.m - (((u.m % 86400000) + 86400000) % 86400000) AND p.agent_key = u.a \
                 AND u.s = ANY(p.seq)) \
                 ON CONFLICT DO NOTHING RETURNING agent_key::bigint, seq",
            )
            .bind(pick(&|i| Some(rows[i].2.measured_at_ms)))
            .bind(pick(&|i| Some(rows[i].2.seq as i64)))
            .bind(received)
            .bind(pick(&|i| Some(rk[i].check)))
            .bind(pick(&|i| Some(rk[i].agent)))
            .bind(pick(&|i| Some(rk[i].region)))
            .bind(pick(&|i| rk[i].reason))
            .bind(pick(&|i| Some(micros(rows[i].2.timings.total_ms))))
            .bind(timing(|t| t.dns_ms))
            .bind(timing(|t| t.connect_ms))
            .bind(timing(|t| t.tls_ms))
            .bind(timing(|t| t.ttfb_ms))
            .bind(timing(|t| t.transfer_ms))
            .bind(pick(&|i| rows[i].2.status_code.map(i64::from)))
            .bind(maybe_stored.iter().map(|&i| rows[i].2.ok).collect::<Vec<_>>())
            .bind(pick(&|i| rk[i].values))
            .bind(
                maybe_stored
                    .iter()
                    .map(|&i| rk[i].reason.is_none().then_some(rows[i].2.reason.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                maybe_stored
                    .iter()
                    .map(|&i| values[i].as_deref().filter(|_| rk[i].values.is_none()))
                    .collect::<Vec<_>>(),
            )
            .bind(careful_before)
            .fetch_all(&mut **tx)
            .await?;
            fresh.results.note(
                &keys,
                stored,
                maybe_stored
                    .iter()
                    .map(|&i| (rows[i].0.as_str(), rows[i].2.seq)),
            )?;
        }
    }
    if !batch.metrics.is_empty() {
        let rows = &batch.metrics;
        let mk = metric_keys(&keys, batch)?;
        let nets: Vec<(f64, f64)> = rows.iter().map(|(_, _, m)| net_totals(m)).collect();
        let stored = sqlx::query(
            "INSERT INTO metric_rows (measured_at_ms, seq, received_at_ms, mem_total_bytes, mem_used_bytes, \
             swap_total_bytes, swap_used_bytes, uptime_s, agent_key, region_key, cpu_pct, load1, load5, \
             load15, net_rx_bytes_per_s, net_tx_bytes_per_s, detail) \
             SELECT m, s, $3, mt, mu, st, su, up, a, g, c, l1, l5, l15, rx, tx, d FROM UNNEST( \
             $1::bigint[], $2::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], \
             $8::bigint[], $9::bigint[], $10::bigint[], $11::float4[], $12::float8[], $13::float8[], \
             $14::float8[], $15::float8[], $16::float8[], $17::text[]) \
             AS u(m, s, mt, mu, st, su, up, a, g, c, l1, l5, l15, rx, tx, d) \
             WHERE u.m >= $18 OR NOT EXISTS (SELECT 1 FROM metric_packs p WHERE p.agent_key = u.a \
             AND p.day_ms = u.m - (((u.m % 86400000) + 86400000) % 86400000) AND u.s = ANY(p.seq)) \
             ON CONFLICT DO NOTHING RETURNING agent_key::bigint, seq",
        )
        .bind(rows.iter().map(|(_, _, m)| m.measured_at_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.seq as i64).collect::<Vec<_>>())
        .bind(received)
        .bind(rows.iter().map(|(_, _, m)| m.mem_total_bytes as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.mem_used_bytes as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.swap_total_bytes as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.swap_used_bytes as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.uptime_s as i64).collect::<Vec<_>>())
        .bind(mk.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(mk.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.cpu_pct).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.load1).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.load5).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| m.load15).collect::<Vec<_>>())
        .bind(nets.iter().map(|n| n.0).collect::<Vec<_>>())
        .bind(nets.iter().map(|n| n.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| metrics_detail(m)).collect::<Vec<_>>())
        .bind(careful_before)
        .fetch_all(&mut **tx)
        .await?;
        fresh.metrics.note(
            &keys,
            stored,
            rows.iter().map(|(a, _, m)| (a.as_str(), m.seq)),
        )?;
    }
    fresh.keys = keys;
    if !batch.events.is_empty() {
        let rows = &batch.events;
        sqlx::query(
            "INSERT INTO events (agent_id, seq, measured_at_ms, source, severity, message) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(rows.iter().map(|(a, _, _)| a.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, e)| e.seq as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, e)| e.measured_at_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, e)| e.source.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, e)| e.severity.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, e)| e.message.as_str()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(fresh)
}

async fn commit_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    batch: &IngestBatch,
    cache: &KeyCache,
) -> Result<Fresh, StoreError> {
    let received = batch.received_at_ms;
    let mut fresh = Fresh::default();
    let values: Vec<Option<String>> = batch
        .results
        .iter()
        .map(|(_, _, r)| values_json(r))
        .collect();
    let keys = BatchKeys::resolve_sqlite(tx, batch, &values, cache).await?;
    let rk = result_keys(&keys, batch, &values)?;
    let mut chunk_start = 0;
    for (chunk, chunk_keys) in batch
        .results
        .chunks(SQLITE_CHUNK_ROWS)
        .zip(rk.chunks(SQLITE_CHUNK_ROWS))
    {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO result_rows (check_key, measured_at_ms, agent_key, seq, region_key, received_at_ms, \
             ok, status_code, reason_key, total_us, dns_us, connect_us, tls_us, ttfb_us, transfer_us, \
             values_key, reason, result_values) ",
        );
        let chunk_values = &values[chunk_start..chunk_start + chunk.len()];
        chunk_start += chunk.len();
        let rows = chunk.iter().zip(chunk_keys).zip(chunk_values);
        query.push_values(rows, |mut row, (((_, _, r), k), v)| {
            let t = &r.timings;
            row.push_bind(k.check)
                .push_bind(r.measured_at_ms)
                .push_bind(k.agent)
                .push_bind(r.seq as i64)
                .push_bind(k.region)
                .push_bind(received)
                .push_bind(r.ok)
                .push_bind(r.status_code.map(i64::from))
                .push_bind(k.reason)
                .push_bind(micros(t.total_ms))
                .push_bind(t.dns_ms.map(micros))
                .push_bind(t.connect_ms.map(micros))
                .push_bind(t.tls_ms.map(micros))
                .push_bind(t.ttfb_ms.map(micros))
                .push_bind(t.transfer_ms.map(micros))
                .push_bind(k.values)
                .push_bind(k.reason.is_none().then_some(r.reason.as_str()))
                .push_bind(v.as_deref().filter(|_| k.values.is_none()));
        });
        query.push(" ON CONFLICT DO NOTHING RETURNING agent_key, seq");
        let stored = query.build().fetch_all(&mut **tx).await?;
        fresh.results.note(
            &keys,
            stored,
            chunk.iter().map(|(a, _, r)| (a.as_str(), r.seq)),
        )?;
    }
    let mk = metric_keys(&keys, batch)?;
    for (chunk, chunk_keys) in batch
        .metrics
        .chunks(SQLITE_CHUNK_ROWS)
        .zip(mk.chunks(SQLITE_CHUNK_ROWS))
    {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO metric_rows (agent_key, measured_at_ms, seq, region_key, received_at_ms, cpu_pct, \
             mem_total_bytes, mem_used_bytes, swap_total_bytes, swap_used_bytes, load1, load5, load15, \
             uptime_s, net_rx_bytes_per_s, net_tx_bytes_per_s, detail) ",
        );
        query.push_values(chunk.iter().zip(chunk_keys), |mut row, ((_, _, m), k)| {
            let (rx, tx) = net_totals(m);
            row.push_bind(k.0)
                .push_bind(m.measured_at_ms)
                .push_bind(m.seq as i64)
                .push_bind(k.1)
                .push_bind(received)
                .push_bind(f64::from(m.cpu_pct))
                .push_bind(m.mem_total_bytes as i64)
                .push_bind(m.mem_used_bytes as i64)
                .push_bind(m.swap_total_bytes as i64)
                .push_bind(m.swap_used_bytes as i64)
                .push_bind(m.load1)
                .push_bind(m.load5)
                .push_bind(m.load15)
                .push_bind(m.uptime_s as i64)
                .push_bind(rx)
                .push_bind(tx)
                .push_bind(metrics_detail(m));
        });
        query.push(" ON CONFLICT DO NOTHING RETURNING agent_key, seq");
        let stored = query.build().fetch_all(&mut **tx).await?;
        fresh.metrics.note(
            &keys,
            stored,
            chunk.iter().map(|(a, _, m)| (a.as_str(), m.seq)),
        )?;
    }
    fresh.keys = keys;
    for chunk in batch.events.chunks(SQLITE_CHUNK_ROWS) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (agent_id, seq, measured_at_ms, source, severity, message) ",
        );
        query.push_values(chunk, |mut row, (agent, _, e)| {
            row.push_bind(agent.as_str())
                .push_bind(e.seq as i64)
                .push_bind(e.measured_at_ms)
                .push_bind(e.source.as_str())
                .push_bind(e.severity.as_str())
                .push_bind(e.message.as_str());
        });
        query.push(" ON CONFLICT DO NOTHING");
        query.build().execute(&mut **tx).await?;
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_above_their_agents_mark_and_first_in_the_batch_are_new_for_certain() {
        let marks = HashMap::from([("a".to_owned(), 10), ("b".to_owned(), 0)]);
        let (a, b, fallback) = ("a".to_owned(), "b".to_owned(), "control-plane".to_owned());
        let rows = [
            (&a, 10), // at the mark: may be stored
            (&a, 11),
            (&a, 11), // the same row twice in one batch: the second may conflict
            (&b, 1),
            (&fallback, 5), // no mark: may be stored
            (&a, 3),
            (&a, 14), // above the mark, out of order, each first: new
            (&a, 12),
            (&b, 2),
            (&a, 13),
            (&a, 12), // again, after rows out of order
            (&b, 2),
            (&a, 15),
        ];
        let (new, maybe_stored) = new_for_certain(&marks, rows.into_iter());
        assert_eq!(new, [1, 3, 6, 7, 8, 9, 12]);
        assert_eq!(maybe_stored, [0, 2, 4, 5, 10, 11]);
    }

    #[test]
    fn copy_text_escapes_what_the_text_format_reads_as_syntax() {
        let mut line = String::new();
        copy_text(&mut line, "a\\b\tc\nd\re \\N");
        assert_eq!(line, "a\\\\b\\tc\\nd\\re \\\\N");
        let mut line = String::new();
        copy_field::<i64>(&mut line, None);
        copy_field(&mut line, Some(42));
        copy_field(&mut line, Some(-7_i64));
        copy_field(&mut line, Some(u64::MAX));
        assert_eq!(line, "\\N\t42\t-7\t18446744073709551615\t");
    }
}
