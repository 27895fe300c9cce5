//! Rollup tables: merging a batch's aggregates inside its ingest transaction, reading them
//! back for uptime and series, and deleting rows past their retention in small batches.
//!
//! Check rollups carry a sketch that SQL cannot add, so their rows are read, merged in Rust
//! and written back; on PostgreSQL a transaction-scoped advisory lock serialises these merges
//! across writers. Metric rollups merge in the upsert itself.
//!
//! Writes go to the keyed tables (`check_minutes`, `check_hours`, `check_days`,
//! `metric_minutes`, `metric_hours`: integer keys, see `keys.rs`); reads go through the views
//! under the old names (`rollup_checks_minute`, …) that give the keys back as names, or join
//! the key tables themselves after aggregating.

use std::collections::BTreeMap;

use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::keys::BatchKeys;
use super::models::micros;
use super::{Store, StoreError, on_pool};
use crate::rollup::{CheckBucket, CountSource, HostMetric, MetricBucket, Resolution, WindowCount};
use crate::sketch::{CheckAggregate, GaugeAggregate, Sketch};

/// Stored sketches that did not decode and were started again from empty (exported as
/// `vantage_store_rows_corrupt_total{table="rollups"}`).
pub static CORRUPT_SKETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The advisory lock id that serialises check-rollup merges on PostgreSQL.
pub(crate) const ROLLUP_LOCK: i64 = 0x7661_6e74_0001;

/// Keys per statement on SQLite (3 or 7 binds a key, well under its bind limit).
const SQLITE_CHUNK_KEYS: usize = 300;

/// The keyed check rollup table at `resolution` (written).
fn checks_table(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "check_minutes",
        Resolution::Hour => "check_hours",
    }
}

/// The view of [`checks_table`] with names (read).
fn checks_view(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "rollup_checks_minute",
        Resolution::Hour => "rollup_checks_hour",
    }
}

/// The keyed metric rollup table at `resolution` (written).
fn metrics_table(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "metric_minutes",
        Resolution::Hour => "metric_hours",
    }
}

/// The view of [`metrics_table`] with names (read).
fn metrics_view(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "rollup_metrics_minute",
        Resolution::Hour => "rollup_metrics_hour",
    }
}

const CHECK_COLUMNS: &str =
    "check_id, region, bucket_ms, n, failures, sum_ms, min_ms, max_ms, sketch";
/// The keyed tables hold latencies as integer microseconds.
const KEYED_CHECK_COLUMNS: &str =
    "check_key, region_key, bucket_ms, n, failures, sum_us, min_us, max_us, sketch";

/// A rollup row's aggregate, from a view (`micros` false: `sum_ms`, …) or a keyed table
/// (`micros` true: `sum_us`, …).
fn decode_aggregate(row: &impl RowLike, micros: bool) -> Result<CheckAggregate, sqlx::Error> {
    let sketch_bytes: Vec<u8> = row.get_col("sketch")?;
    let sketch = Sketch::decode(&sketch_bytes).unwrap_or_else(|error| {
        CORRUPT_SKETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(%error, "Stored rollup sketch does not decode; its percentiles restart");
        Sketch::default()
    });
    let (sum_ms, min_ms, max_ms) = if micros {
        let ms = |us: i64| us as f64 / 1000.0;
        (
            ms(row.get_col("sum_us")?),
            row.get_col::<Option<i64>>("min_us")?.map(ms),
            row.get_col::<Option<i64>>("max_us")?.map(ms),
        )
    } else {
        (
            row.get_col("sum_ms")?,
            row.get_col("min_ms")?,
            row.get_col("max_ms")?,
        )
    };
    Ok(CheckAggregate {
        count: row.get_col::<i64>("n")?.max(0) as u64,
        failures: row.get_col::<i64>("failures")?.max(0) as u64,
        sum_ms,
        min_ms,
        max_ms,
        sketch,
    })
}

/// A row of a check rollup view (names).
fn decode_check_row(row: &impl RowLike) -> Result<(CheckBucket, CheckAggregate), sqlx::Error> {
    Ok((
        CheckBucket {
            check_id: row.get_col("check_id")?,
            region: row.get_col("region")?,
            bucket_ms: row.get_col("bucket_ms")?,
        },
        decode_aggregate(row, false)?,
    ))
}

/// A row of a keyed check rollup table: its (check key, region key, bucket) and aggregate.
fn decode_keyed_row(row: &impl RowLike) -> Result<(CheckKey, CheckAggregate), sqlx::Error> {
    Ok((
        (
            row.get_col("check_key")?,
            row.get_col("region_key")?,
            row.get_col("bucket_ms")?,
        ),
        decode_aggregate(row, true)?,
    ))
}

/// A sum of latencies in milliseconds as integer microseconds (not bounded to `i32`).
fn sum_micros(ms: f64) -> i64 {
    if ms.is_finite() {
        (ms * 1000.0).round() as i64
    } else {
        0
    }
}

/// (check key, region key, bucket start) of a check rollup row.
type CheckKey = (i64, i64, i64);
/// (agent key, metric code, bucket start) of a metric rollup row.
type MetricKey = (i64, i16, i64);

/// The adds of a merge under their keys.
fn keyed<V>(
    keys: &BatchKeys,
    adds: BTreeMap<CheckBucket, V>,
) -> Result<BTreeMap<CheckKey, V>, StoreError> {
    adds.into_iter()
        .map(|(k, v)| {
            Ok((
                (
                    keys.check(&k.check_id)?,
                    keys.region(&k.region)?,
                    k.bucket_ms,
                ),
                v,
            ))
        })
        .collect()
}

/// Metric adds under their keys.
fn keyed_metrics(
    keys: &BatchKeys,
    adds: BTreeMap<MetricBucket, GaugeAggregate>,
) -> Result<Vec<(MetricKey, GaugeAggregate)>, StoreError> {
    adds.into_iter()
        .map(|(k, v)| Ok(((keys.agent(&k.agent_id)?, k.metric.code(), k.bucket_ms), v)))
        .collect()
}

/// Column access shared by both backends' rows.
trait RowLike {
    fn get_col<T>(&self, name: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>;
}

impl RowLike for sqlx::postgres::PgRow {
    fn get_col<T>(&self, name: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>,
    {
        self.try_get(name)
    }
}

impl RowLike for sqlx::sqlite::SqliteRow {
    fn get_col<T>(&self, name: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>,
    {
        self.try_get(name)
    }
}

/// Merges `adds` into the check rollup at `resolution`, inside `tx` (PostgreSQL).
pub(super) async fn merge_checks_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    keys: &BatchKeys,
    resolution: Resolution,
    adds: BTreeMap<CheckBucket, CheckAggregate>,
) -> Result<(), StoreError> {
    if adds.is_empty() {
        return Ok(());
    }
    let mut adds = keyed(keys, adds)?;
    let table = checks_table(resolution);
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLLUP_LOCK)
        .execute(&mut **tx)
        .await?;
    let stored = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT t.check_key::bigint AS check_key, t.region_key::bigint AS region_key, t.bucket_ms, t.n, \
         t.failures, t.sum_us, t.min_us::bigint AS min_us, t.max_us::bigint AS max_us, t.sketch FROM {table} t \
         JOIN UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS u(c, g, b) \
         ON t.check_key = u.c AND t.region_key = u.g AND t.bucket_ms = u.b"
    )))
    .bind(adds.keys().map(|k| k.0).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.2).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    for row in &stored {
        let (key, old) = decode_keyed_row(row)?;
        if let Some(add) = adds.get_mut(&key) {
            add.merge(&old);
        }
    }
    let sketches: Vec<Vec<u8>> = adds.values().map(|a| a.sketch.encode()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} ({KEYED_CHECK_COLUMNS}) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], \
         $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bytea[]) \
         ON CONFLICT (check_key, region_key, bucket_ms) DO UPDATE SET n = excluded.n, \
         failures = excluded.failures, sum_us = excluded.sum_us, min_us = excluded.min_us, \
         max_us = excluded.max_us, sketch = excluded.sketch"
    )))
    .bind(adds.keys().map(|k| k.0).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.2).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.count as i64).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.failures as i64).collect::<Vec<_>>())
    .bind(adds.values().map(|a| sum_micros(a.sum_ms)).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.min_ms.map(micros)).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.max_ms.map(micros)).collect::<Vec<_>>())
    .bind(sketches)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`merge_checks_postgres`] for SQLite (its single writer serialises the merges).
pub(super) async fn merge_checks_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    keys: &BatchKeys,
    resolution: Resolution,
    adds: BTreeMap<CheckBucket, CheckAggregate>,
) -> Result<(), StoreError> {
    let mut adds = keyed(keys, adds)?;
    let table = checks_table(resolution);
    let wanted: Vec<CheckKey> = adds.keys().copied().collect();
    for chunk in wanted.chunks(SQLITE_CHUNK_KEYS) {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {KEYED_CHECK_COLUMNS} FROM {table} WHERE (check_key, region_key, bucket_ms) IN (VALUES "
        ));
        let mut values = query.separated(", ");
        for key in chunk {
            values.push("(");
            values.push_bind_unseparated(key.0);
            values.push_unseparated(", ");
            values.push_bind_unseparated(key.1);
            values.push_unseparated(", ");
            values.push_bind_unseparated(key.2);
            values.push_unseparated(")");
        }
        query.push(")");
        for row in query.build().fetch_all(&mut **tx).await? {
            let (key, old) = decode_keyed_row(&row)?;
            if let Some(add) = adds.get_mut(&key) {
                add.merge(&old);
            }
        }
    }
    let rows: Vec<(CheckKey, CheckAggregate)> = adds.into_iter().collect();
    for chunk in rows.chunks(SQLITE_CHUNK_KEYS) {
        let mut query =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO {table} ({KEYED_CHECK_COLUMNS}) "));
        query.push_values(chunk, |mut row, (key, a)| {
            row.push_bind(key.0)
                .push_bind(key.1)
                .push_bind(key.2)
                .push_bind(a.count as i64)
                .push_bind(a.failures as i64)
                .push_bind(sum_micros(a.sum_ms))
                .push_bind(a.min_ms.map(micros))
                .push_bind(a.max_ms.map(micros))
                .push_bind(a.sketch.encode());
        });
        query.push(
            " ON CONFLICT (check_key, region_key, bucket_ms) DO UPDATE SET n = excluded.n, \
             failures = excluded.failures, sum_us = excluded.sum_us, min_us = excluded.min_us, \
             max_us = excluded.max_us, sketch = excluded.sketch",
        );
        query.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Adds per-day (check, region) counts in one upsert (PostgreSQL).
pub(super) async fn merge_days_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    keys: &BatchKeys,
    days: BTreeMap<CheckBucket, (u64, u64)>,
) -> Result<(), StoreError> {
    if days.is_empty() {
        return Ok(());
    }
    let days = keyed(keys, days)?;
    sqlx::query(
        "INSERT INTO check_days (check_key, region_key, bucket_ms, n, failures) SELECT * FROM \
         UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) \
         ON CONFLICT (check_key, region_key, bucket_ms) DO UPDATE SET n = check_days.n + excluded.n, \
         failures = check_days.failures + excluded.failures",
    )
    .bind(days.keys().map(|k| k.0).collect::<Vec<_>>())
    .bind(days.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(days.keys().map(|k| k.2).collect::<Vec<_>>())
    .bind(days.values().map(|(n, _)| *n as i64).collect::<Vec<_>>())
    .bind(days.values().map(|(_, f)| *f as i64).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`merge_days_postgres`] for SQLite.
pub(super) async fn merge_days_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    keys: &BatchKeys,
    days: BTreeMap<CheckBucket, (u64, u64)>,
) -> Result<(), StoreError> {
    let rows: Vec<(CheckKey, (u64, u64))> = keyed(keys, days)?.into_iter().collect();
    for chunk in rows.chunks(SQLITE_CHUNK_KEYS) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO check_days (check_key, region_key, bucket_ms, n, failures) ",
        );
        query.push_values(chunk, |mut row, (key, (n, f))| {
            row.push_bind(key.0)
                .push_bind(key.1)
                .push_bind(key.2)
                .push_bind(*n as i64)
                .push_bind(*f as i64);
        });
        query.push(
            " ON CONFLICT (check_key, region_key, bucket_ms) DO UPDATE SET n = check_days.n + excluded.n, \
             failures = check_days.failures + excluded.failures",
        );
        query.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Merges `adds` into the metric rollup at `resolution` in one upsert (PostgreSQL).
pub(super) async fn merge_metrics_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    keys: &BatchKeys,
    resolution: Resolution,
    adds: BTreeMap<MetricBucket, GaugeAggregate>,
) -> Result<(), StoreError> {
    if adds.is_empty() {
        return Ok(());
    }
    let adds = keyed_metrics(keys, adds)?;
    let table = metrics_table(resolution);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (agent_key, metric, bucket_ms, n, sum, min, max) SELECT * FROM UNNEST($1::bigint[], \
         $2::smallint[], $3::bigint[], $4::bigint[], $5::float8[], $6::float8[], $7::float8[]) \
         ON CONFLICT (agent_key, metric, bucket_ms) DO UPDATE SET n = {table}.n + excluded.n, \
         sum = {table}.sum + excluded.sum, min = LEAST({table}.min, excluded.min), \
         max = GREATEST({table}.max, excluded.max)"
    )))
    .bind(adds.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
    .bind(adds.iter().map(|(k, _)| k.1).collect::<Vec<_>>())
    .bind(adds.iter().map(|(k, _)| k.2).collect::<Vec<_>>())
    .bind(adds.iter().map(|(_, a)| a.count as i64).collect::<Vec<_>>())
    .bind(adds.iter().map(|(_, a)| a.sum).collect::<Vec<_>>())
    .bind(adds.iter().map(|(_, a)| a.min).collect::<Vec<_>>())
    .bind(adds.iter().map(|(_, a)| a.max).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`merge_metrics_postgres`] for SQLite.
pub(super) async fn merge_metrics_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    keys: &BatchKeys,
    resolution: Resolution,
    adds: BTreeMap<MetricBucket, GaugeAggregate>,
) -> Result<(), StoreError> {
    let table = metrics_table(resolution);
    let rows = keyed_metrics(keys, adds)?;
    for chunk in rows.chunks(SQLITE_CHUNK_KEYS) {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {table} (agent_key, metric, bucket_ms, n, sum, min, max) "
        ));
        query.push_values(chunk, |mut row, (key, a)| {
            row.push_bind(key.0)
                .push_bind(key.1)
                .push_bind(key.2)
                .push_bind(a.count as i64)
                .push_bind(a.sum)
                .push_bind(a.min)
                .push_bind(a.max);
        });
        query.push(format!(
            " ON CONFLICT (agent_key, metric, bucket_ms) DO UPDATE SET n = {table}.n + excluded.n, \
             sum = {table}.sum + excluded.sum, min = MIN({table}.min, excluded.min), \
             max = MAX({table}.max, excluded.max)"
        ));
        query.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// What one retention pass deleted, per table, and what it packed (PostgreSQL).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expired {
    pub results: u64,
    pub host_metrics: u64,
    /// Reason and probe-values texts no kept result uses any more.
    pub texts: u64,
    pub rollup_minute: u64,
    pub rollup_hour: u64,
    /// Rows of days that are over moved into day packs (results, metrics, minute rollups).
    pub packed: u64,
    /// Events from integration sources.
    pub events: u64,
}

/// Rows deleted per statement: short transactions that never hold the writer for long.
pub const EXPIRE_BATCH_ROWS: i64 = 5000;

impl Store {
    /// Check rollup rows of `check_ids` at `resolution` with buckets in `[from_ms, to_ms)`,
    /// ordered by check, region and bucket (whatever order the rows lie in on disk: after
    /// an expiry PostgreSQL returned them in a different order).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn check_rollups(
        &self,
        resolution: Resolution,
        check_ids: &[String],
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(CheckBucket, CheckAggregate)>, StoreError> {
        let table = checks_view(resolution);
        // Minute rollups are packed by day on PostgreSQL: open only the packs of the range.
        let days = match resolution {
            Resolution::Minute => format!(
                " AND day_ms >= {} AND day_ms < {to_ms}",
                super::packs::day_start(from_ms)
            ),
            Resolution::Hour => String::new(),
        };
        let mut out = Vec::new();
        for chunk in check_ids.chunks(super::IN_LIST_CHUNK) {
            match self {
                Store::Postgres(pool) => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {CHECK_COLUMNS} FROM {table} WHERE check_id = ANY($1) AND bucket_ms >= $2 \
                         AND bucket_ms < $3{days}"
                    )))
                    .bind(chunk)
                    .bind(from_ms)
                    .bind(to_ms)
                    .fetch_all(pool)
                    .await?;
                    for row in &rows {
                        out.push(decode_check_row(row)?);
                    }
                }
                Store::Sqlite(pool) => {
                    let mut query = QueryBuilder::<Sqlite>::new(format!(
                        "SELECT {CHECK_COLUMNS} FROM {table} WHERE bucket_ms >= "
                    ));
                    query
                        .push_bind(from_ms)
                        .push(" AND bucket_ms < ")
                        .push_bind(to_ms)
                        .push(days.as_str());
                    query.push(" AND check_id IN (");
                    let mut ids = query.separated(", ");
                    for id in chunk {
                        ids.push_bind(id.as_str());
                    }
                    query.push(")");
                    for row in query.build().fetch_all(pool).await? {
                        out.push(decode_check_row(&row)?);
                    }
                }
            }
        }
        out.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        Ok(out)
    }

    /// Result and failure counts per (check, day) from `from_ms` on, summed over regions,
    /// for `check_ids`: what status pages draw their uptime bars from.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn day_counts(
        &self,
        check_ids: &[String],
        from_ms: i64,
    ) -> Result<Vec<(String, i64, i64, i64)>, StoreError> {
        let mut out = Vec::new();
        for chunk in check_ids.chunks(super::IN_LIST_CHUNK) {
            let rows: Vec<(String, i64, i64, i64)> = on_pool!(self, pool => {
                let mut query = sqlx::QueryBuilder::new(
                    "SELECT k.id, t.bucket_ms, CAST(SUM(t.n) AS BIGINT), \
                     CAST(SUM(t.failures) AS BIGINT) FROM check_keys k JOIN check_days t \
                     ON t.check_key = k.key AND t.bucket_ms >= ",
                );
                query.push_bind(from_ms).push(" WHERE k.id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(id.as_str());
                }
                query.push(") GROUP BY k.id, t.bucket_ms ORDER BY k.id, t.bucket_ms");
                query.build_query_as().fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// (check, region) result and failure counts summed over the hour or day rollup from
    /// `from_ms` on, for `check_ids` or every check: what uptime reads, without sketches.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn window_counts(
        &self,
        source: CountSource,
        from_ms: i64,
        check_ids: Option<&[String]>,
    ) -> Result<Vec<WindowCount>, StoreError> {
        let table = match source {
            CountSource::Hour => "check_hours",
            CountSource::Day => "check_days",
        };
        // Check by check, each a range of its primary key (check, time, region) from `from_ms`
        // on (SQLite's CROSS JOIN keeps that order), summed; names joined to the sums after.
        let select = |join: &str| {
            format!(
                "SELECT c.id, g.id, s.n, s.f FROM (SELECT t.check_key, t.region_key, \
                 CAST(SUM(t.n) AS BIGINT) AS n, CAST(SUM(t.failures) AS BIGINT) AS f \
                 FROM check_keys k {join} {table} t ON t.check_key = k.key AND t.bucket_ms >= "
            )
        };
        let tail = " GROUP BY t.check_key, t.region_key) s JOIN check_keys c ON c.key = s.check_key \
                    JOIN region_keys g ON g.key = s.region_key";
        let decode = |rows: Vec<(String, String, i64, i64)>| {
            rows.into_iter()
                .map(|(check_id, region, n, f)| WindowCount {
                    check_id,
                    region,
                    results: n.max(0) as u64,
                    failures: f.max(0) as u64,
                })
        };
        let all = [None];
        let chunks: Vec<Option<&[String]>> = match check_ids {
            Some(ids) => ids.chunks(super::IN_LIST_CHUNK).map(Some).collect(),
            None => all.to_vec(),
        };
        let mut out = Vec::new();
        for chunk in chunks {
            match self {
                Store::Postgres(pool) => {
                    let mut query = QueryBuilder::<Postgres>::new(select("JOIN"));
                    query.push_bind(from_ms);
                    if let Some(ids) = chunk {
                        query.push(" WHERE k.id = ANY(").push_bind(ids).push(")");
                    }
                    query.push(tail);
                    out.extend(decode(query.build_query_as().fetch_all(pool).await?));
                }
                Store::Sqlite(pool) => {
                    let mut query = QueryBuilder::<Sqlite>::new(select("CROSS JOIN"));
                    query.push_bind(from_ms);
                    if let Some(ids) = chunk {
                        query.push(" WHERE k.id IN (");
                        let mut list = query.separated(", ");
                        for id in ids {
                            list.push_bind(id.as_str());
                        }
                        query.push(")");
                    }
                    query.push(tail);
                    out.extend(decode(query.build_query_as().fetch_all(pool).await?));
                }
            }
        }
        Ok(out)
    }

    /// Raw results of one check measured in `[from_ms, to_ms)`, as (region, measured_at_ms,
    /// ok, total_ms).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn raw_latencies(
        &self,
        check_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64, bool, f64)>, StoreError> {
        let sql = "SELECT region, measured_at_ms, ok, total_ms FROM results WHERE check_id = $1 \
                   AND measured_at_ms >= $2 AND measured_at_ms < $3 AND day_ms >= $4 AND day_ms < $3";
        let day = super::packs::day_start(from_ms);
        Ok(
            on_pool!(self, pool => sqlx::query_as(sql).bind(check_id).bind(from_ms).bind(to_ms).bind(day).fetch_all(pool).await?),
        )
    }

    /// Metric rollup rows of one agent at `resolution` with buckets in `[from_ms, to_ms)`.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn metric_rollups(
        &self,
        resolution: Resolution,
        agent_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(MetricBucket, GaugeAggregate)>, StoreError> {
        let sql = format!(
            "SELECT metric, bucket_ms, n, sum, min, max FROM {} WHERE agent_id = $1 AND bucket_ms >= $2 \
             AND bucket_ms < $3 ORDER BY bucket_ms",
            metrics_view(resolution)
        );
        let rows: Vec<(i16, i64, i64, f64, f64, f64)> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(agent_id).bind(from_ms).bind(to_ms).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .filter_map(|(metric, bucket_ms, n, sum, min, max)| {
                Some((
                    MetricBucket {
                        agent_id: agent_id.to_owned(),
                        metric: HostMetric::from_code(metric)?,
                        bucket_ms,
                    },
                    GaugeAggregate {
                        count: n.max(0) as u64,
                        sum,
                        min,
                        max,
                    },
                ))
            })
            .collect())
    }

    /// Deletes the rows of a keyed table (`key_column` first in its primary key) older than
    /// `before_ms` on `time_column`, key by key: one index seek finds each next key, and each
    /// statement deletes at most about [`EXPIRE_BATCH_ROWS`] of its oldest rows, a short
    /// transaction each.
    async fn expire_keyed(
        &self,
        table: &'static str,
        key_column: &'static str,
        time_column: &'static str,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let next = format!(
            "SELECT CAST(MIN({key_column}) AS BIGINT) FROM {table} WHERE {key_column} > $1"
        );
        // Up to the time of the key's EXPIRE_BATCH_ROWS-th oldest expired row (all of them
        // when it has fewer).
        let delete = format!(
            "DELETE FROM {table} WHERE {key_column} = $1 AND {time_column} < $2 AND {time_column} <= \
             COALESCE((SELECT {time_column} FROM {table} WHERE {key_column} = $1 AND {time_column} < $2 \
             ORDER BY {time_column} LIMIT 1 OFFSET $3), $2)"
        );
        let mut total = 0;
        let mut after = i64::MIN;
        loop {
            let key: Option<i64> = on_pool!(self, pool => sqlx::query_scalar::<_, Option<i64>>(
                sqlx::AssertSqlSafe(next.clone()),
            )
            .bind(after)
            .fetch_one(pool)
            .await?);
            let Some(key) = key else {
                return Ok(total);
            };
            loop {
                let deleted = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(delete.clone()))
                    .bind(key)
                    .bind(before_ms)
                    .bind(EXPIRE_BATCH_ROWS - 1)
                    .execute(pool)
                    .await?
                    .rows_affected());
                total += deleted;
                if deleted < EXPIRE_BATCH_ROWS as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            after = key;
        }
    }

    /// Deletes every row of a PostgreSQL default partition older than `before_ms` on
    /// `time_column` (which its own index covers), a batch per transaction.
    async fn expire_all(
        pool: &sqlx::PgPool,
        table: &'static str,
        time_column: &'static str,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {time_column} < $1 LIMIT $2))"
            )))
            .bind(before_ms)
            .bind(EXPIRE_BATCH_ROWS)
            .execute(pool)
            .await?
            .rows_affected();
            total += deleted;
            if deleted < EXPIRE_BATCH_ROWS as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Makes the raw tables' day partitions (PostgreSQL) from the oldest day still kept to a
    /// few days ahead of `now_ms`; nothing to do on SQLite. Returns the partitions made.
    ///
    /// # Errors
    /// Database errors.
    pub async fn prepare_partitions(
        &self,
        keep: &crate::rollup::Retention,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                use super::partitions::{METRICS, MINUTES, RESULTS, ensure};
                let mut made = ensure(pool, RESULTS, now_ms - keep.raw_ms, now_ms).await?;
                made.extend(ensure(pool, METRICS, now_ms - keep.raw_ms, now_ms).await?);
                made.extend(ensure(pool, MINUTES, now_ms - keep.minute_ms, now_ms).await?);
                Ok(made)
            }
            Store::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Deletes raw rows and rollups older than their retention at `now_ms`, in batches, then
    /// lets SQLite hand the freed pages back to the file system. On PostgreSQL whole day
    /// partitions and day packs go, then the default partitions' old rows; then the days that
    /// are over are packed (`packs.rs`).
    ///
    /// # Errors
    /// Database errors; what was deleted or packed before the error stays so.
    pub async fn expire(
        &self,
        keep: &crate::rollup::Retention,
        now_ms: i64,
    ) -> Result<Expired, StoreError> {
        let raw_before = now_ms - keep.raw_ms;
        let minute_before = now_ms - keep.minute_ms;
        let hour_before = now_ms - keep.hour_ms;
        let (results, host_metrics, check_minutes) = match self {
            Store::Postgres(pool) => {
                use super::partitions::drop_before;
                let (packed_results, packed_metrics, packed_minutes) =
                    super::packs::expire(pool, raw_before, minute_before).await?;
                (
                    drop_before(pool, "result_rows", raw_before).await?
                        + Self::expire_all(
                            pool,
                            "result_rows_default",
                            "measured_at_ms",
                            raw_before,
                        )
                        .await?
                        + packed_results,
                    drop_before(pool, "metric_rows", raw_before).await?
                        + Self::expire_all(
                            pool,
                            "metric_rows_default",
                            "measured_at_ms",
                            raw_before,
                        )
                        .await?
                        + packed_metrics,
                    drop_before(pool, "check_minutes", minute_before).await?
                        + Self::expire_all(
                            pool,
                            "check_minutes_default",
                            "bucket_ms",
                            minute_before,
                        )
                        .await?
                        + packed_minutes,
                )
            }
            Store::Sqlite(_) => (
                self.expire_keyed("result_rows", "check_key", "measured_at_ms", raw_before)
                    .await?,
                self.expire_keyed("metric_rows", "agent_key", "measured_at_ms", raw_before)
                    .await?,
                self.expire_keyed("check_minutes", "check_key", "bucket_ms", minute_before)
                    .await?,
            ),
        };
        let mut expired = Expired {
            results,
            host_metrics,
            texts: super::keys::expire_texts(self, raw_before).await?,
            rollup_minute: check_minutes
                + self
                    .expire_keyed("metric_minutes", "agent_key", "bucket_ms", minute_before)
                    .await?,
            rollup_hour: self
                .expire_keyed("check_hours", "check_key", "bucket_ms", hour_before)
                .await?
                + self
                    .expire_keyed("check_days", "check_key", "bucket_ms", hour_before)
                    .await?
                + self
                    .expire_keyed("metric_hours", "agent_key", "bucket_ms", hour_before)
                    .await?,
            packed: 0,
            events: 0,
        };
        match self {
            Store::Postgres(pool) => {
                let packed =
                    super::packs::pack_all(pool, raw_before, minute_before, now_ms).await?;
                expired.packed = packed.results + packed.metrics + packed.minutes;
            }
            Store::Sqlite(pool) => {
                sqlx::query("PRAGMA incremental_vacuum")
                    .execute(pool)
                    .await?;
            }
        }
        Ok(expired)
    }
}
