//! Day packs on PostgreSQL: once a UTC day is over, its raw results, host metrics and minute
//! rollups move out of the day's partition into one row per (check, agent), (agent) or
//! (check, region) whose columns are arrays, element i of each being the day's i-th row
//! (migrations/postgres/0007_day_packs.sql). PostgreSQL compresses those wide rows, so a
//! packed result costs ~30 bytes where a heap tuple and its index entry cost ~175. The views
//! under the old names read partitions and packs alike; SQLite keeps rows as rows.
//!
//! Nothing is lost or doubled while a day is packed:
//! - Packing a day is one transaction: aggregate its partition into packs (appending to a
//!   pack that exists), then `TRUNCATE` the partition. The partition stays until retention
//!   drops the day, so a row that arrives late for a packed day lands in it and joins the
//!   pack on the next pass.
//! - A day is packed only once it ended [`PACK_AFTER_MS`] ago. Ingest treats rows measured
//!   more than [`CAREFUL_AFTER_MS`] ago (a replayed spool) with care: it holds [`PACK_LOCK`]
//!   shared, which packing holds exclusively, and skips a row whose (agent, seq) is in its
//!   day's pack already (a replay of a packed row counts once). Newer rows can never be in a
//!   day being packed, so ingest of current rows never waits for packing.

use sqlx::PgPool;

use super::StoreError;
use super::partitions::{self, DAY_MS, Partitioned};

/// A day is packed once it ended this long ago.
pub const PACK_AFTER_MS: i64 = 2 * 3_600_000;
/// Ingest takes care with rows measured longer ago than this: they may belong to a day being
/// packed. An hour less than [`PACK_AFTER_MS`]: the hour covers an ingest transaction's
/// length and the clocks of control-plane replicas differing.
pub const CAREFUL_AFTER_MS: i64 = 3_600_000;
// The newest row of a day that packing may take is measured before the day's end, which is
// PACK_AFTER_MS before packing; ingest is careful with rows an hour less late than that.
const _: () = assert!(CAREFUL_AFTER_MS + 3_600_000 <= PACK_AFTER_MS);

/// Packing holds this advisory lock exclusively; ingest of rows older than
/// [`CAREFUL_AFTER_MS`] holds it shared.
pub const PACK_LOCK: i64 = 0x7661_6e74_7061_636b;
/// Keys (checks or agents) aggregated per statement: bounds the memory of one aggregation.
const KEYS_PER_STATEMENT: i64 = 256;

/// How one partitioned table packs.
struct Pack {
    source: Partitioned,
    packs: &'static str,
    /// The columns a pack is per, besides the day; the first one chunks the work.
    group: &'static [&'static str],
    /// The pack table's primary key.
    conflict: &'static str,
    /// The order of rows within a pack, after the group.
    order: &'static str,
    /// (pack column, the element taken from a source row; `$1` is the day's start).
    columns: &'static [(&'static str, &'static str)],
}

const RESULTS: Pack = Pack {
    source: partitions::RESULTS,
    packs: "result_packs",
    group: &["check_key", "agent_key"],
    conflict: "check_key, day_ms, agent_key",
    order: "measured_at_ms, seq",
    columns: &[
        ("at_ms", "(measured_at_ms - $1)::integer"),
        ("seq", "seq"),
        ("received_ms", "received_at_ms - measured_at_ms"),
        ("region_key", "region_key"),
        ("ok", "ok"),
        ("status_code", "status_code"),
        ("total_us", "total_us"),
        ("dns_us", "dns_us"),
        ("connect_us", "connect_us"),
        ("tls_us", "tls_us"),
        ("ttfb_us", "ttfb_us"),
        ("transfer_us", "transfer_us"),
        ("reason_key", "reason_key"),
        ("values_key", "values_key"),
        ("reason", "reason"),
        ("result_values", "result_values"),
    ],
};

const METRICS: Pack = Pack {
    source: partitions::METRICS,
    packs: "metric_packs",
    group: &["agent_key"],
    conflict: "agent_key, day_ms",
    order: "measured_at_ms, seq",
    columns: &[
        ("at_ms", "(measured_at_ms - $1)::integer"),
        ("seq", "seq"),
        ("received_ms", "received_at_ms - measured_at_ms"),
        ("region_key", "region_key"),
        ("mem_total_bytes", "mem_total_bytes"),
        ("mem_used_bytes", "mem_used_bytes"),
        ("swap_total_bytes", "swap_total_bytes"),
        ("swap_used_bytes", "swap_used_bytes"),
        ("uptime_s", "uptime_s"),
        ("load1", "load1"),
        ("load5", "load5"),
        ("load15", "load15"),
        ("net_rx_bytes_per_s", "net_rx_bytes_per_s"),
        ("net_tx_bytes_per_s", "net_tx_bytes_per_s"),
        ("cpu_pct", "cpu_pct"),
        ("detail", "detail"),
    ],
};

const MINUTES: Pack = Pack {
    source: partitions::MINUTES,
    packs: "check_minute_packs",
    group: &["check_key", "region_key"],
    conflict: "check_key, day_ms, region_key",
    order: "bucket_ms",
    columns: &[
        ("at_ms", "(bucket_ms - $1)::integer"),
        ("n", "n"),
        ("failures", "failures"),
        ("sum_us", "sum_us"),
        ("min_us", "min_us"),
        ("max_us", "max_us"),
        ("sketch", "sketch"),
    ],
};

/// The start of the UTC day holding `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

impl Pack {
    /// Aggregates the rows of one partition with chunk keys in `[$2, $3)` into packs of the
    /// day `$1`, appending to packs that exist.
    fn insert_sql(&self, partition: &str) -> String {
        let group = self.group.join(", ");
        let columns: Vec<&str> = self.columns.iter().map(|c| c.0).collect();
        let aggregates: Vec<String> = self
            .columns
            .iter()
            .map(|(_, element)| format!("array_agg({element})"))
            .collect();
        let appends: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = {packs}.{c} || excluded.{c}", packs = self.packs))
            .collect();
        format!(
            "INSERT INTO {packs} ({group}, day_ms, n_rows, {columns}) \
             SELECT {group}, $1, COUNT(*), {aggregates} FROM (SELECT * FROM {partition} \
             WHERE {chunk} >= $2 AND {chunk} < $3 ORDER BY {group}, {order}) AS s GROUP BY {group} \
             ON CONFLICT ({conflict}) DO UPDATE SET n_rows = {packs}.n_rows + excluded.n_rows, {appends}",
            packs = self.packs,
            columns = columns.join(", "),
            aggregates = aggregates.join(", "),
            chunk = self.group[0],
            order = self.order,
            conflict = self.conflict,
            appends = appends.join(", "),
        )
    }

    /// Packs every day of the source that ended [`PACK_AFTER_MS`] before `now_ms` and is
    /// still kept (ends after `kept_from_ms`), and returns how many rows moved.
    async fn pack_days(
        &self,
        pool: &PgPool,
        kept_from_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut moved = 0u64;
        for (partition, day) in partitions::existing(pool, self.source.table).await? {
            if day + DAY_MS > now_ms - PACK_AFTER_MS || day + DAY_MS <= kept_from_ms {
                continue;
            }
            // A packed day is empty unless rows came late.
            let any: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM {partition})"
            )))
            .fetch_one(pool)
            .await?;
            if !any {
                continue;
            }
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PACK_LOCK)
                .execute(&mut *tx)
                .await?;
            let (rows, first, last): (i64, Option<i64>, Option<i64>) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*), MIN({key})::bigint, MAX({key})::bigint FROM {partition}",
                    key = self.group[0]
                )))
                .fetch_one(&mut *tx)
                .await?;
            let sql = self.insert_sql(&partition);
            if let (Some(first), Some(last)) = (first, last) {
                let mut from = first;
                while from <= last {
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(day)
                        .bind(from)
                        .bind(from + KEYS_PER_STATEMENT)
                        .execute(&mut *tx)
                        .await?;
                    from += KEYS_PER_STATEMENT;
                }
            }
            sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {partition}")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            moved += rows.max(0) as u64;
        }
        Ok(moved)
    }

    /// Deletes the packs of days that end at or before `before_ms` and returns how many rows
    /// they held.
    async fn expire(&self, pool: &PgPool, before_ms: i64) -> Result<u64, StoreError> {
        let rows: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE day_ms <= $1 - {DAY_MS} RETURNING n_rows",
            self.packs
        )))
        .bind(before_ms)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(|n| n.max(0) as u64).sum())
    }
}

/// What one packing pass moved, in rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    pub results: u64,
    pub metrics: u64,
    pub minutes: u64,
}

/// Packs the days that are over: results and metrics kept after `raw_from_ms`, minute
/// rollups kept after `minute_from_ms`. `now_ms` is capped at the wall clock, which ingest
/// goes by.
///
/// # Errors
/// Database errors; days packed before the error stay packed.
pub async fn pack_all(
    pool: &PgPool,
    raw_from_ms: i64,
    minute_from_ms: i64,
    now_ms: i64,
) -> Result<Packed, StoreError> {
    let now_ms = now_ms.min(super::now_ms());
    Ok(Packed {
        results: RESULTS.pack_days(pool, raw_from_ms, now_ms).await?,
        metrics: METRICS.pack_days(pool, raw_from_ms, now_ms).await?,
        minutes: MINUTES.pack_days(pool, minute_from_ms, now_ms).await?,
    })
}

/// Deletes the packs of days past retention: (results, metrics, minute rollups) rows.
///
/// # Errors
/// Database errors.
pub async fn expire(
    pool: &PgPool,
    raw_before_ms: i64,
    minute_before_ms: i64,
) -> Result<(u64, u64, u64), StoreError> {
    Ok((
        RESULTS.expire(pool, raw_before_ms).await?,
        METRICS.expire(pool, raw_before_ms).await?,
        MINUTES.expire(pool, minute_before_ms).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_sql_appends_every_column_of_the_group() {
        let sql = RESULTS.insert_sql("result_rows_p20261201");
        assert!(sql.starts_with(
            "INSERT INTO result_packs (check_key, agent_key, day_ms, n_rows, at_ms, seq, "
        ));
        assert!(
            sql.contains(
                "GROUP BY check_key, agent_key ON CONFLICT (check_key, day_ms, agent_key)"
            )
        );
        assert!(
            sql.contains("result_values = result_packs.result_values || excluded.result_values")
        );
        assert_eq!(sql.matches("array_agg(").count(), RESULTS.columns.len());
        let minutes = MINUTES.insert_sql("check_minutes_p20261201");
        assert!(minutes.contains("ORDER BY check_key, region_key, bucket_ms"));
    }

    #[test]
    fn days_start_at_utc_midnight() {
        assert_eq!(day_start(DAY_MS + 5), DAY_MS);
        assert_eq!(day_start(DAY_MS), DAY_MS);
        assert_eq!(day_start(-1), -DAY_MS);
    }
}
