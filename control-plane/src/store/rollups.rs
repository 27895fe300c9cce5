//! Rollup tables: merging a batch's aggregates inside its ingest transaction, reading them
//! back for uptime and series, and deleting rows past their retention in small batches.
//!
//! Check rollups carry a sketch that SQL cannot add, so their rows are read, merged in Rust
//! and written back; on PostgreSQL a transaction-scoped advisory lock serialises these merges
//! across writers. Metric rollups merge in the upsert itself.

use std::collections::BTreeMap;

use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::{Store, StoreError, on_pool};
use crate::rollup::{CheckBucket, CountSource, HostMetric, MetricBucket, Resolution, WindowCount};
use crate::sketch::{CheckAggregate, GaugeAggregate, Sketch};

/// Stored sketches that did not decode and were started again from empty (exported as
/// `vantage_store_rows_corrupt_total{table="rollups"}`).
pub static CORRUPT_SKETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The advisory lock id that serialises check-rollup merges on PostgreSQL.
const ROLLUP_LOCK: i64 = 0x7661_6e74_0001;

/// Keys per statement on SQLite (3 or 7 binds a key, well under its bind limit).
const SQLITE_CHUNK_KEYS: usize = 300;

fn checks_table(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "rollup_checks_minute",
        Resolution::Hour => "rollup_checks_hour",
    }
}

fn metrics_table(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "rollup_metrics_minute",
        Resolution::Hour => "rollup_metrics_hour",
    }
}

const CHECK_COLUMNS: &str =
    "check_id, region, bucket_ms, n, failures, sum_ms, min_ms, max_ms, sketch";

fn decode_check_row(row: &impl RowLike) -> Result<(CheckBucket, CheckAggregate), sqlx::Error> {
    let sketch_bytes: Vec<u8> = row.get_col("sketch")?;
    let sketch = Sketch::decode(&sketch_bytes).unwrap_or_else(|error| {
        CORRUPT_SKETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(%error, "Stored rollup sketch does not decode; its percentiles restart");
        Sketch::default()
    });
    Ok((
        CheckBucket {
            check_id: row.get_col("check_id")?,
            region: row.get_col("region")?,
            bucket_ms: row.get_col("bucket_ms")?,
        },
        CheckAggregate {
            count: row.get_col::<i64>("n")?.max(0) as u64,
            failures: row.get_col::<i64>("failures")?.max(0) as u64,
            sum_ms: row.get_col("sum_ms")?,
            min_ms: row.get_col("min_ms")?,
            max_ms: row.get_col("max_ms")?,
            sketch,
        },
    ))
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
    resolution: Resolution,
    mut adds: BTreeMap<CheckBucket, CheckAggregate>,
) -> Result<(), StoreError> {
    if adds.is_empty() {
        return Ok(());
    }
    let table = checks_table(resolution);
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLLUP_LOCK)
        .execute(&mut **tx)
        .await?;
    let stored = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CHECK_COLUMNS} FROM {table} t JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) AS u(c, g, b) \
         ON t.check_id = u.c AND t.region = u.g AND t.bucket_ms = u.b"
    )))
    .bind(adds.keys().map(|k| k.check_id.as_str()).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.region.as_str()).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.bucket_ms).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    for row in &stored {
        let (key, old) = decode_check_row(row)?;
        if let Some(add) = adds.get_mut(&key) {
            add.merge(&old);
        }
    }
    let sketches: Vec<Vec<u8>> = adds.values().map(|a| a.sketch.encode()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} ({CHECK_COLUMNS}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], \
         $4::bigint[], $5::bigint[], $6::float8[], $7::float8[], $8::float8[], $9::bytea[]) \
         ON CONFLICT (check_id, region, bucket_ms) DO UPDATE SET n = excluded.n, failures = excluded.failures, \
         sum_ms = excluded.sum_ms, min_ms = excluded.min_ms, max_ms = excluded.max_ms, sketch = excluded.sketch"
    )))
    .bind(adds.keys().map(|k| k.check_id.as_str()).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.region.as_str()).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.bucket_ms).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.count as i64).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.failures as i64).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.sum_ms).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.min_ms).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.max_ms).collect::<Vec<_>>())
    .bind(sketches)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`merge_checks_postgres`] for SQLite (its single writer serialises the merges).
pub(super) async fn merge_checks_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    resolution: Resolution,
    mut adds: BTreeMap<CheckBucket, CheckAggregate>,
) -> Result<(), StoreError> {
    let table = checks_table(resolution);
    let keys: Vec<CheckBucket> = adds.keys().cloned().collect();
    for chunk in keys.chunks(SQLITE_CHUNK_KEYS) {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {CHECK_COLUMNS} FROM {table} WHERE (check_id, region, bucket_ms) IN (VALUES "
        ));
        let mut values = query.separated(", ");
        for key in chunk {
            values.push("(");
            values.push_bind_unseparated(key.check_id.as_str());
            values.push_unseparated(", ");
            values.push_bind_unseparated(key.region.as_str());
            values.push_unseparated(", ");
            values.push_bind_unseparated(key.bucket_ms);
            values.push_unseparated(")");
        }
        query.push(")");
        for row in query.build().fetch_all(&mut **tx).await? {
            let (key, old) = decode_check_row(&row)?;
            if let Some(add) = adds.get_mut(&key) {
                add.merge(&old);
            }
        }
    }
    let rows: Vec<(CheckBucket, CheckAggregate)> = adds.into_iter().collect();
    for chunk in rows.chunks(SQLITE_CHUNK_KEYS) {
        let mut query =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO {table} ({CHECK_COLUMNS}) "));
        query.push_values(chunk, |mut row, (key, a)| {
            row.push_bind(key.check_id.as_str())
                .push_bind(key.region.as_str())
                .push_bind(key.bucket_ms)
                .push_bind(a.count as i64)
                .push_bind(a.failures as i64)
                .push_bind(a.sum_ms)
                .push_bind(a.min_ms)
                .push_bind(a.max_ms)
                .push_bind(a.sketch.encode());
        });
        query.push(
            " ON CONFLICT (check_id, region, bucket_ms) DO UPDATE SET n = excluded.n, failures = excluded.failures, \
             sum_ms = excluded.sum_ms, min_ms = excluded.min_ms, max_ms = excluded.max_ms, sketch = excluded.sketch",
        );
        query.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Adds per-day (check, region) counts in one upsert (PostgreSQL).
pub(super) async fn merge_days_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    days: BTreeMap<CheckBucket, (u64, u64)>,
) -> Result<(), StoreError> {
    if days.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rollup_checks_day (check_id, region, bucket_ms, n, failures) SELECT * FROM \
         UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) \
         ON CONFLICT (check_id, region, bucket_ms) DO UPDATE SET n = rollup_checks_day.n + excluded.n, \
         failures = rollup_checks_day.failures + excluded.failures",
    )
    .bind(days.keys().map(|k| k.check_id.as_str()).collect::<Vec<_>>())
    .bind(days.keys().map(|k| k.region.as_str()).collect::<Vec<_>>())
    .bind(days.keys().map(|k| k.bucket_ms).collect::<Vec<_>>())
    .bind(days.values().map(|(n, _)| *n as i64).collect::<Vec<_>>())
    .bind(days.values().map(|(_, f)| *f as i64).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`merge_days_postgres`] for SQLite.
pub(super) async fn merge_days_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    days: BTreeMap<CheckBucket, (u64, u64)>,
) -> Result<(), StoreError> {
    let rows: Vec<(CheckBucket, (u64, u64))> = days.into_iter().collect();
    for chunk in rows.chunks(SQLITE_CHUNK_KEYS) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO rollup_checks_day (check_id, region, bucket_ms, n, failures) ",
        );
        query.push_values(chunk, |mut row, (key, (n, f))| {
            row.push_bind(key.check_id.as_str())
                .push_bind(key.region.as_str())
                .push_bind(key.bucket_ms)
                .push_bind(*n as i64)
                .push_bind(*f as i64);
        });
        query.push(
            " ON CONFLICT (check_id, region, bucket_ms) DO UPDATE SET n = rollup_checks_day.n + excluded.n, \
             failures = rollup_checks_day.failures + excluded.failures",
        );
        query.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Merges `adds` into the metric rollup at `resolution` in one upsert (PostgreSQL).
pub(super) async fn merge_metrics_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    resolution: Resolution,
    adds: BTreeMap<MetricBucket, GaugeAggregate>,
) -> Result<(), StoreError> {
    if adds.is_empty() {
        return Ok(());
    }
    let table = metrics_table(resolution);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (agent_id, metric, bucket_ms, n, sum, min, max) SELECT * FROM UNNEST($1::text[], \
         $2::smallint[], $3::bigint[], $4::bigint[], $5::float8[], $6::float8[], $7::float8[]) \
         ON CONFLICT (agent_id, metric, bucket_ms) DO UPDATE SET n = {table}.n + excluded.n, \
         sum = {table}.sum + excluded.sum, min = LEAST({table}.min, excluded.min), \
         max = GREATEST({table}.max, excluded.max)"
    )))
    .bind(adds.keys().map(|k| k.agent_id.as_str()).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.metric.code()).collect::<Vec<_>>())
    .bind(adds.keys().map(|k| k.bucket_ms).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.count as i64).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.sum).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.min).collect::<Vec<_>>())
    .bind(adds.values().map(|a| a.max).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`merge_metrics_postgres`] for SQLite.
pub(super) async fn merge_metrics_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    resolution: Resolution,
    adds: BTreeMap<MetricBucket, GaugeAggregate>,
) -> Result<(), StoreError> {
    let table = metrics_table(resolution);
    let rows: Vec<(MetricBucket, GaugeAggregate)> = adds.into_iter().collect();
    for chunk in rows.chunks(SQLITE_CHUNK_KEYS) {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {table} (agent_id, metric, bucket_ms, n, sum, min, max) "
        ));
        query.push_values(chunk, |mut row, (key, a)| {
            row.push_bind(key.agent_id.as_str())
                .push_bind(key.metric.code())
                .push_bind(key.bucket_ms)
                .push_bind(a.count as i64)
                .push_bind(a.sum)
                .push_bind(a.min)
                .push_bind(a.max);
        });
        query.push(format!(
            " ON CONFLICT (agent_id, metric, bucket_ms) DO UPDATE SET n = {table}.n + excluded.n, \
             sum = {table}.sum + excluded.sum, min = MIN({table}.min, excluded.min), \
             max = MAX({table}.max, excluded.max)"
        ));
        query.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// What one retention pass deleted, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expired {
    pub results: u64,
    pub host_metrics: u64,
    pub rollup_minute: u64,
    pub rollup_hour: u64,
}

/// Rows deleted per statement: short transactions that never hold the writer for long.
pub const EXPIRE_BATCH_ROWS: i64 = 5000;

impl Store {
    /// Check rollup rows of `check_ids` at `resolution` with buckets in `[from_ms, to_ms)`.
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
        let table = checks_table(resolution);
        let mut out = Vec::new();
        for chunk in check_ids.chunks(super::IN_LIST_CHUNK) {
            match self {
                Store::Postgres(pool) => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {CHECK_COLUMNS} FROM {table} WHERE check_id = ANY($1) AND bucket_ms >= $2 \
                         AND bucket_ms < $3"
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
                        .push_bind(to_ms);
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
            CountSource::Hour => "rollup_checks_hour",
            CountSource::Day => "rollup_checks_day",
        };
        let select = format!(
            "SELECT check_id, region, CAST(SUM(n) AS BIGINT), CAST(SUM(failures) AS BIGINT) FROM {table} \
             WHERE bucket_ms >= "
        );
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
                    let mut query = QueryBuilder::<Postgres>::new(&select);
                    query.push_bind(from_ms);
                    if let Some(ids) = chunk {
                        query.push(" AND check_id = ANY(").push_bind(ids).push(")");
                    }
                    query.push(" GROUP BY check_id, region");
                    out.extend(decode(query.build_query_as().fetch_all(pool).await?));
                }
                Store::Sqlite(pool) => {
                    let mut query = QueryBuilder::<Sqlite>::new(&select);
                    query.push_bind(from_ms);
                    if let Some(ids) = chunk {
                        query.push(" AND check_id IN (");
                        let mut list = query.separated(", ");
                        for id in ids {
                            list.push_bind(id.as_str());
                        }
                        query.push(")");
                    }
                    query.push(" GROUP BY check_id, region");
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
                   AND measured_at_ms >= $2 AND measured_at_ms < $3";
        Ok(
            on_pool!(self, pool => sqlx::query_as(sql).bind(check_id).bind(from_ms).bind(to_ms).fetch_all(pool).await?),
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
            metrics_table(resolution)
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

    /// Deletes up to [`EXPIRE_BATCH_ROWS`] rows of `table` older than `before_ms` on
    /// `time_column` (which an index covers) and returns how many it deleted.
    async fn expire_some(
        &self,
        table: &'static str,
        time_column: &'static str,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let deleted = match self {
            Store::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {time_column} < $1 LIMIT $2))"
            )))
            .bind(before_ms)
            .bind(EXPIRE_BATCH_ROWS)
            .execute(pool)
            .await?
            .rows_affected(),
            Store::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {time_column} < $1 LIMIT $2)"
            )))
            .bind(before_ms)
            .bind(EXPIRE_BATCH_ROWS)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(deleted)
    }

    /// Deletes SQLite's results older than `before_ms` check by check through
    /// `results_check_time` (no index on time alone, which would cost every insert), a batch
    /// per transaction. The checks are walked with one index seek each.
    async fn expire_sqlite_results(
        pool: &sqlx::SqlitePool,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut after = String::new();
        while let Some(check) = sqlx::query_scalar::<_, Option<String>>(
            "SELECT MIN(check_id) FROM results WHERE check_id > $1",
        )
        .bind(&after)
        .fetch_one(pool)
        .await?
        {
            loop {
                let deleted = sqlx::query(
                    "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results \
                     WHERE check_id = $1 AND measured_at_ms < $2 LIMIT $3)",
                )
                .bind(&check)
                .bind(before_ms)
                .bind(EXPIRE_BATCH_ROWS)
                .execute(pool)
                .await?
                .rows_affected();
                total += deleted;
                if deleted < EXPIRE_BATCH_ROWS as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            after = check;
        }
        Ok(total)
    }

    /// Deletes every row of `table` older than `before_ms`, a batch per transaction.
    async fn expire_all(
        &self,
        table: &'static str,
        time_column: &'static str,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self.expire_some(table, time_column, before_ms).await?;
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
                super::partitions::ensure(pool, now_ms - keep.raw_ms, now_ms).await
            }
            Store::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Deletes raw rows and rollups older than their retention at `now_ms` (on PostgreSQL,
    /// whole day partitions of raw rows, then the default partition's old rows), in batches,
    /// then lets SQLite hand the freed pages back to the file system.
    ///
    /// # Errors
    /// Database errors; what was deleted before stays deleted.
    pub async fn expire(
        &self,
        keep: &crate::rollup::Retention,
        now_ms: i64,
    ) -> Result<Expired, StoreError> {
        let raw_before = now_ms - keep.raw_ms;
        let (results, host_metrics) = match self {
            // Whole days go with their partition; the default partition row by row.
            Store::Postgres(pool) => (
                super::partitions::drop_before(pool, "results", raw_before).await?
                    + self
                        .expire_all("results_default", "measured_at_ms", raw_before)
                        .await?,
                super::partitions::drop_before(pool, "host_metrics", raw_before).await?
                    + self
                        .expire_all("host_metrics_default", "measured_at_ms", raw_before)
                        .await?,
            ),
            Store::Sqlite(pool) => (
                Self::expire_sqlite_results(pool, raw_before).await?,
                self.expire_all("host_metrics", "measured_at_ms", raw_before)
                    .await?,
            ),
        };
        let expired = Expired {
            results,
            host_metrics,
            rollup_minute: self
                .expire_all("rollup_checks_minute", "bucket_ms", now_ms - keep.minute_ms)
                .await?
                + self
                    .expire_all(
                        "rollup_metrics_minute",
                        "bucket_ms",
                        now_ms - keep.minute_ms,
                    )
                    .await?,
            rollup_hour: self
                .expire_all("rollup_checks_hour", "bucket_ms", now_ms - keep.hour_ms)
                .await?
                + self
                    .expire_all("rollup_checks_day", "bucket_ms", now_ms - keep.hour_ms)
                    .await?
                + self
                    .expire_all("rollup_metrics_hour", "bucket_ms", now_ms - keep.hour_ms)
                    .await?,
        };
        if let Store::Sqlite(pool) = self {
            sqlx::query("PRAGMA incremental_vacuum")
                .execute(pool)
                .await?;
        }
        Ok(expired)
    }
}
