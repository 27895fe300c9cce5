//! Day partitions on PostgreSQL: the raw tables `result_rows` and `metric_rows` by
//! `measured_at_ms`, and the minute rollups `check_minutes` by `bucket_ms`, one partition per
//! UTC day (`{table}_pYYYYMMDD`), with a default partition for rows outside every day that
//! exists (a spool replayed long after, a clock far off). Partitions are made ahead of time;
//! retention drops whole partitions, so expiring a day is a catalogue change, never a mass
//! DELETE; the default partition, which holds few rows, is expired in small batches. A day
//! that is over is packed (`packs.rs`): its partition is emptied, not dropped.

use sqlx::PgPool;

use super::StoreError;

/// A table partitioned by day on `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioned {
    pub table: &'static str,
    pub time: &'static str,
}

pub const RESULTS: Partitioned = Partitioned {
    table: "result_rows",
    time: "measured_at_ms",
};
pub const METRICS: Partitioned = Partitioned {
    table: "metric_rows",
    time: "measured_at_ms",
};
pub const MINUTES: Partitioned = Partitioned {
    table: "check_minutes",
    time: "bucket_ms",
};
pub const DAY_MS: i64 = 86_400_000;
/// Days made ahead of today.
const AHEAD_DAYS: i64 = 3;

/// A day partition's name: `{table}_pYYYYMMDD` for the day starting at `day_ms`.
pub fn partition_name(table: &str, day_ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(day_ms.div_euclid(1000))
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    format!(
        "{table}_p{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The start of the day named by a partition of `table`, if `name` is one.
pub fn partition_day(table: &str, name: &str) -> Option<i64> {
    let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// The day partitions of `table` that exist, as (name, day start).
pub async fn existing(pool: &PgPool, table: &str) -> Result<Vec<(String, i64)>, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    Ok(names
        .into_iter()
        .filter_map(|name| partition_day(table, &name).map(|day| (name, day)))
        .collect())
}

/// Makes the day partitions of `spec` from the day of `from_ms` to `AHEAD_DAYS` after
/// `now_ms`. Rows of such a day already in the default partition are moved into the new one
/// in the same transaction. Returns the partitions made.
///
/// # Errors
/// Database errors; partitions made before the error stay.
pub async fn ensure(
    pool: &PgPool,
    spec: Partitioned,
    from_ms: i64,
    now_ms: i64,
) -> Result<Vec<String>, StoreError> {
    let Partitioned { table, time } = spec;
    let mut made = Vec::new();
    let first = from_ms.div_euclid(DAY_MS) * DAY_MS;
    let last = now_ms.div_euclid(DAY_MS) * DAY_MS + AHEAD_DAYS * DAY_MS;
    let have: Vec<i64> = existing(pool, table)
        .await?
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let mut day = first;
    while day <= last {
        if !have.contains(&day) {
            let name = partition_name(table, day);
            let mut tx = pool.begin().await?;
            // Serialises makers across replicas; a second one finds the table made.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&name)
                .fetch_one(&mut *tx)
                .await?;
            if !exists {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)"
                )))
                .execute(&mut *tx)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "WITH moved AS (DELETE FROM {table}_default WHERE {time} >= $1 \
                     AND {time} < $2 RETURNING *) INSERT INTO {name} SELECT * FROM moved"
                )))
                .bind(day)
                .bind(day + DAY_MS)
                .execute(&mut *tx)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({day}) TO ({})",
                    day + DAY_MS
                )))
                .execute(&mut *tx)
                .await?;
                made.push(name);
            }
            tx.commit().await?;
        }
        day += DAY_MS;
    }
    Ok(made)
}

/// Drops the day partitions of `table` that end at or before `before_ms` and returns how
/// many rows they held (counted just before the drop: one scan of a day, no deletes).
///
/// # Errors
/// Database errors; partitions dropped before the error stay dropped.
pub async fn drop_before(pool: &PgPool, table: &str, before_ms: i64) -> Result<u64, StoreError> {
    let mut rows = 0u64;
    for (name, day) in existing(pool, table).await? {
        if day + DAY_MS > before_ms {
            continue;
        }
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {name}")))
                .fetch_one(pool)
                .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
            .execute(pool)
            .await?;
        rows += n.max(0) as u64;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_days_round_trip() {
        let day = 20_424 * DAY_MS; // 2025-12-02
        assert_eq!(partition_name("results", day), "results_p20251202");
        assert_eq!(partition_day("results", "results_p20251202"), Some(day));
        assert_eq!(partition_day("results", "results_default"), None);
        assert_eq!(partition_day("results", "host_metrics_p20251202"), None);
        assert_eq!(partition_day("results", "results_p20251332"), None);
        assert_eq!(partition_day("results", "results_p2025120"), None);
        assert_eq!(
            partition_name("results", day + DAY_MS - 1),
            "results_p20251202"
        );
    }
}
