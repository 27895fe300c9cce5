//! The scheduling lease's SQL: a PostgreSQL session-level advisory lock held on a connection
//! of its own ([`LeaseSession`]). The lock lives as long as that session: PostgreSQL releases
//! it when the connection closes, which is at once when the holding process dies, and within
//! the session's TCP keepalive/user timeouts (set here to ~10 s) when the path to it is lost.
//! On SQLite there is no session: one process owns the file and always leads.

use std::time::Duration;

use sqlx::Connection;

use super::{Store, StoreError};

/// The advisory lock id of the scheduling lease (`"vantlead"`). The store's other advisory
/// locks are transaction-scoped and have ids of their own (a test keeps them apart).
pub const SCHEDULER_LOCK_ID: i64 = 0x7661_6e74_6c65_6164;

/// How long PostgreSQL waits for unacknowledged data or keepalive answers on the lease
/// session before it drops it (and the lock with it).
pub const SERVER_SIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL connection of its own on which the scheduling lock is taken and held.
pub struct LeaseSession {
    conn: sqlx::PgConnection,
}

impl Store {
    /// Opens the lease session: `None` on SQLite, where this process always leads.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub async fn lease_session(&self) -> Result<Option<LeaseSession>, StoreError> {
        let Store::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut conn = pool.acquire().await?.detach();
        // A holder that vanishes without closing (cable cut, frozen VM) must not keep the
        // lock for the kernel's default two hours of keepalive: PostgreSQL probes after 5 s
        // idle, gives up after 3 missed probes 2 s apart, or after 10 s of unacknowledged data.
        let timeout_ms = SERVER_SIDE_TIMEOUT.as_millis();
        for setting in [
            "SET tcp_keepalives_idle = 5".to_owned(),
            "SET tcp_keepalives_interval = 2".to_owned(),
            "SET tcp_keepalives_count = 3".to_owned(),
            format!("SET tcp_user_timeout = {timeout_ms}"),
            "SET application_name = 'vantage lease'".to_owned(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(setting))
                .execute(&mut conn)
                .await?;
        }
        Ok(Some(LeaseSession { conn }))
    }
}

impl LeaseSession {
    /// Takes the scheduling lock if nobody holds it; `true` when this session holds it now.
    ///
    /// # Errors
    /// The session is broken.
    pub async fn try_take(&mut self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SCHEDULER_LOCK_ID)
            .fetch_one(&mut self.conn)
            .await?)
    }

    /// Whether this session still holds the lock (a round trip that also proves the session
    /// alive).
    ///
    /// # Errors
    /// The session is broken.
    pub async fn holds(&mut self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted AND objsubid = 1 \
             AND ((classid::bigint << 32) | objid::bigint) = $1)",
        )
        .bind(SCHEDULER_LOCK_ID)
        .fetch_one(&mut self.conn)
        .await?)
    }

    /// Closes the session, which releases the lock.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease is held for hours on end: sharing an id with a transaction-scoped lock would
    /// block that lock's every taker for as long.
    #[test]
    fn the_lease_shares_its_lock_id_with_no_other_lock() {
        let ids = [
            SCHEDULER_LOCK_ID,
            super::super::packs::PACK_LOCK,
            super::super::rollups::ROLLUP_LOCK,
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
