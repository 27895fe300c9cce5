//! The store: every read and write of persistent state, on PostgreSQL or SQLite.
//!
//! [`Store`] wraps one pool of either backend. SQL is written once where the two dialects
//! agree (`$N` placeholders work on both through sqlx) and the [`on_pool!`] macro expands a
//! statement for each backend; bulk ingest differs per backend and lives in [`ingest`].
//! The store is the source of truth: the broker's retained messages are rebuilt from it at
//! start. It knows nothing of HTTP or MQTT.

pub mod events;
pub mod incidents;
pub mod ingest;
pub mod keys;
pub mod lease;
pub mod live;
pub mod models;
pub mod packs;
pub mod partitions;
pub mod rollups;
pub mod sessions;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

pub use events::*;
pub use incidents::*;
pub use models::*;

/// How a heartbeat write meets agents whose rows another transaction holds (an ingest
/// commit holds its agents' rows until it ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedAgents {
    /// Wait for them.
    Wait,
    /// Leave their heartbeats out ([`HeartbeatsRecorded::skipped`]).
    Skip,
}

/// What [`Store::record_heartbeats`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeartbeatsRecorded {
    /// Agents a heartbeat brought back online.
    pub back: Vec<String>,
    /// Agents whose heartbeats were left out ([`LockedAgents::Skip`]).
    pub skipped: Vec<String>,
}

/// What the store holds for an agent once its hello is recorded ([`Store::record_hello`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloRecorded {
    /// The highest seq stored for the agent (0: none).
    pub last_seq: u64,
    /// The inclusive seq range held back because the agent's state was rewound.
    pub held: Option<(u64, u64)>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} {id:?} already exists")]
    Conflict { what: &'static str, id: String },
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The task a write was handed to stopped before it answered (the process is stopping).
    #[error("write interrupted: {0}")]
    Interrupted(&'static str),
}

/// A connection pool to one of the two backends.
#[derive(Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection URL may hold a password: never print it.
        f.write_str(match self {
            Store::Postgres(_) => "Store::Postgres",
            Store::Sqlite(_) => "Store::Sqlite",
        })
    }
}

/// Runs the same expression against whichever pool the store holds.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($pool) => $body,
            $crate::store::Store::Sqlite($pool) => $body,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_pool;

/// Opens a transaction that writes. On SQLite it takes the write lock at `BEGIN`
/// (`BEGIN IMMEDIATE`), so a transaction that reads first never has to upgrade its lock
/// later, which SQLite refuses at once ("database is locked") instead of waiting for the busy
/// timeout when another connection wrote in between.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// Stored check rows left out of listings because they do not decode (process-wide; exported
/// as `vantage_store_rows_corrupt_total{table="checks"}`).
pub static CORRUPT_CHECK_ROWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Rows per statement when assignments are written in batches (3 binds a row, well under
/// SQLite's bind limit).
const ASSIGNMENT_CHUNK_ROWS: usize = 1000;

/// Milliseconds since the Unix epoch, now.
/// Ids per `IN (…)` list: far under both engines' bind limits.
pub(crate) const IN_LIST_CHUNK: usize = 500;

/// Decodes stored check rows; a row that does not decode is left out, logged and counted
/// ([`CORRUPT_CHECK_ROWS`]), so one bad row never hides the others.
fn decode_checks(raw: Vec<RawCheckRow>) -> Vec<CheckRow> {
    raw.into_iter()
        .filter_map(|raw| match CheckRow::try_from(raw) {
            Ok(row) => Some(row),
            Err(error) => {
                CORRUPT_CHECK_ROWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(%error, "Stored check does not decode; left out");
                None
            }
        })
        .collect()
}

/// The last millisecond a time in a query may name (the end of the year 9999): bounds that
/// keep every sum and step over query times inside `i64`.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lower-case hex SHA-256 of a secret; secrets are stored only in this form.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// A random identifier or secret: `prefix` followed by `n_bytes` random bytes in hex.
pub fn random_id(prefix: &str, n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    rand::fill(&mut bytes[..]);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Connections in the SQLite pool.
const SQLITE_CONNECTIONS: u32 = 4;
/// Page cache of each SQLite connection (`PRAGMA cache_size`, negative: KiB): 64 MiB, which
/// lets ingest's writer keep the rollups and indexes it touches in memory (DESIGN.md: ~105k
/// rows/s with it against ~70k without).
const SQLITE_CACHE_KIB: &str = "-65536";
/// SQLite's heap across every connection of the process (`PRAGMA soft_heap_limit`, bytes:
/// 96 MiB): above it SQLite recycles cached pages instead of growing. Without it the four
/// page caches filled towards 256 MiB as the database grew (`bench-fleet` at 10,000 agents:
/// +0.35 MiB/s for ten minutes).
const SQLITE_SOFT_HEAP_BYTES: &str = "100663296";

impl Store {
    /// Connects to `database_url` (`postgres://…`) or, when it is `None`, to the SQLite file
    /// `vantage.db` in `data_dir`, creating it.
    ///
    /// # Errors
    /// Fails when the database cannot be reached or opened.
    pub async fn connect(database_url: Option<&str>, data_dir: &Path) -> Result<Store, StoreError> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                Ok(Store::Postgres(pool))
            }
            Some(url) => {
                let options = SqliteConnectOptions::from_str(url)?;
                Self::open_sqlite(options).await
            }
            None => {
                let options = SqliteConnectOptions::new().filename(data_dir.join("vantage.db"));
                Self::open_sqlite(options).await
            }
        }
    }

    async fn open_sqlite(options: SqliteConnectOptions) -> Result<Store, StoreError> {
        let options = options
            .create_if_missing(true)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("cache_size", SQLITE_CACHE_KIB)
            .pragma("soft_heap_limit", SQLITE_SOFT_HEAP_BYTES);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_CONNECTIONS)
            .connect_with(options)
            .await?;
        Ok(Store::Sqlite(pool))
    }

    /// Whether this is PostgreSQL, the store several replicas may share.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// The backend's name: `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the pending migrations of this backend.
    ///
    /// # Errors
    /// Fails when a migration fails or the recorded history does not match the embedded one.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await?,
            Store::Sqlite(pool) => {
                sqlx::migrate!("../migrations/sqlite").run(pool).await?;
                // A file made before retention existed has auto_vacuum off: one VACUUM turns
                // on incremental vacuum, so retention's deletes shrink the file from now on.
                let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
                    .fetch_one(pool)
                    .await?;
                if mode != 2 {
                    tracing::info!("Turning on incremental vacuum (one VACUUM of the SQLite file)");
                    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
                        .execute(pool)
                        .await?;
                    sqlx::query("VACUUM").execute(pool).await?;
                }
            }
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    // ---- regions -------------------------------------------------------------------------

    /// Creates the region if it does not exist yet.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn ensure_region(&self, id: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO regions (id, created_at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(now_ms()).execute(pool).await?.rows_affected());
        Ok(())
    }

    /// Every region with its agent counts.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_regions(&self) -> Result<Vec<RegionRow>, StoreError> {
        let sql = "SELECT r.id, r.created_at_ms, \
              (SELECT COUNT(*) FROM agents a WHERE a.region = r.id AND a.revoked_at_ms IS NULL) AS n_agents, \
              (SELECT COUNT(*) FROM agents a WHERE a.region = r.id AND a.revoked_at_ms IS NULL AND a.state = 'online') AS n_online \
            FROM regions r ORDER BY r.id";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    // ---- enrollment tokens ---------------------------------------------------------------

    /// Creates an enrollment token; returns its row and the secret, shown once.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn create_enrollment_token(
        &self,
        region: &str,
        labels: &BTreeMap<String, String>,
        uses: i64,
        ttl_s: i64,
    ) -> Result<(EnrollmentTokenRow, String), StoreError> {
        self.ensure_region(region).await?;
        let secret = random_id("vet_", 24);
        let now = now_ms();
        let row = EnrollmentTokenRow {
            id: random_id("et-", 6),
            region: region.to_owned(),
            labels: serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()),
            uses_left: uses,
            expires_at_ms: now + ttl_s * 1000,
            created_at_ms: now,
        };
        let sql = "INSERT INTO enrollment_tokens (id, token_hash, region, labels, uses_left, expires_at_ms, created_at_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&row.id)
            .bind(hash_secret(&secret))
            .bind(&row.region)
            .bind(&row.labels)
            .bind(row.uses_left)
            .bind(row.expires_at_ms)
            .bind(row.created_at_ms)
            .execute(pool)
            .await?
            .rows_affected());
        Ok((row, secret))
    }

    /// Every enrollment token (without secrets).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRow>, StoreError> {
        let sql = "SELECT id, region, labels, uses_left, expires_at_ms, created_at_ms \
                   FROM enrollment_tokens ORDER BY created_at_ms";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    /// Deletes an enrollment token; returns whether it existed.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delete_enrollment_token(&self, id: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM enrollment_tokens WHERE id = $1";
        let n =
            on_pool!(self, pool => sqlx::query(sql).bind(id).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Enrollment in one transaction: spends one use of the token with this secret and
    /// inserts the agent `make` builds from its grant. Nothing is spent when the insert fails.
    ///
    /// # Errors
    /// Database errors only (the token is then unspent); an unusable token is an `Err` inside
    /// the `Ok`.
    pub async fn enroll_agent(
        &self,
        secret: &str,
        make: impl FnOnce(&EnrollmentGrant) -> AgentRow,
    ) -> Result<Result<AgentRow, TokenRefusal>, StoreError> {
        let hash = hash_secret(secret);
        let now = now_ms();
        let spend = "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
                     WHERE token_hash = $1 AND uses_left > 0 AND expires_at_ms > $2 \
                     RETURNING region, labels";
        let insert = "INSERT INTO agents (id, region, labels, hostname, arch, os, version, cert_serial, \
                      cert_not_after_ms, state, enrolled_at_ms) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'offline', $10)";
        let enrolled: Option<AgentRow> = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let granted: Option<(String, String)> = sqlx::query_as(spend)
                .bind(&hash)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            match granted {
                None => None,
                Some((region, labels)) => {
                    let labels = serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt {
                        what: "enrollment token labels",
                        detail: e.to_string(),
                    })?;
                    let agent = make(&EnrollmentGrant { region, labels });
                    sqlx::query(insert)
                        .bind(&agent.id)
                        .bind(&agent.region)
                        .bind(agent.labels.to_json())
                        .bind(&agent.hostname)
                        .bind(&agent.arch)
                        .bind(&agent.os)
                        .bind(&agent.version)
                        .bind(&agent.cert_serial)
                        .bind(agent.cert_not_after_ms)
                        .bind(agent.enrolled_at_ms)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Some(agent)
                }
            }
        });
        if let Some(agent) = enrolled {
            return Ok(Ok(agent));
        }
        let sql = "SELECT uses_left, expires_at_ms FROM enrollment_tokens WHERE token_hash = $1";
        let found: Option<(i64, i64)> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(&hash).fetch_optional(pool).await?);
        Ok(Err(match found {
            None => TokenRefusal::Unknown,
            Some((_, expires)) if expires <= now => TokenRefusal::Expired,
            Some(_) => TokenRefusal::UsedUp,
        }))
    }

    // ---- API tokens ----------------------------------------------------------------------

    /// Creates an API token; returns its row and the secret, shown once.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn create_api_token(
        &self,
        role: Role,
        name: &str,
    ) -> Result<(ApiTokenRow, String), StoreError> {
        let secret = random_id("vat_", 24);
        let row = ApiTokenRow {
            id: random_id("at-", 6),
            role,
            name: name.to_owned(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        let sql = "INSERT INTO api_tokens (id, token_hash, role, name, created_at_ms) VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&row.id)
            .bind(hash_secret(&secret))
            .bind(row.role.as_str())
            .bind(&row.name)
            .bind(row.created_at_ms)
            .execute(pool)
            .await?
            .rows_affected());
        Ok((row, secret))
    }

    /// The role of the live API token with this secret, if any.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn api_token_role(&self, secret: &str) -> Result<Option<Role>, StoreError> {
        Ok(self.api_token(secret).await?.map(|token| token.role))
    }

    /// The id and role of the live API token with this secret, if any.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn api_token(&self, secret: &str) -> Result<Option<TokenIdentity>, StoreError> {
        let sql = "SELECT id, role FROM api_tokens WHERE token_hash = $1 AND revoked_at_ms IS NULL";
        let found: Option<(String, String)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(hash_secret(secret))
            .fetch_optional(pool)
            .await?);
        Ok(found.and_then(|(id, role)| {
            Some(TokenIdentity {
                id,
                role: Role::parse(&role)?,
            })
        }))
    }

    /// Ids of every revoked API token.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn revoked_api_token_ids(&self) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT id FROM api_tokens WHERE revoked_at_ms IS NOT NULL";
        let ids: Vec<(String,)> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Every API token, oldest first (ids, roles and names only: never a secret or hash).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>, StoreError> {
        let sql = "SELECT id, role, name, created_at_ms, revoked_at_ms FROM api_tokens \
                   ORDER BY created_at_ms, id";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    /// Revokes an API token: from now on [`Store::api_token_role`] refuses it. Returns
    /// whether a live token with this id existed.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool, StoreError> {
        let sql =
            "UPDATE api_tokens SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL";
        let n = on_pool!(self, pool => sqlx::query(sql)
            .bind(now_ms())
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// How many API tokens exist (revoked ones included).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn count_api_tokens(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM api_tokens";
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await?);
        Ok(n)
    }

    // ---- agents --------------------------------------------------------------------------

    /// One agent by id.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn get_agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("{AGENT_COLUMNS} WHERE id = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?),
        )
    }

    /// Agents, optionally of one region, revoked ones included.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_agents(&self, region: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        let sql = format!("{AGENT_COLUMNS} WHERE ($1 IS NULL OR region = $1) ORDER BY id");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(region).fetch_all(pool).await?),
        )
    }

    /// The agents assignment may place checks on: online and unrevoked, by id, with only
    /// what placing needs (assignment runs on every agent coming and going: at 10,000 agents
    /// decoding whole rows was a fifth of the control plane's time in a login storm).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn online_agents(&self) -> Result<Vec<OnlineAgent>, StoreError> {
        let sql = "SELECT id, region FROM agents WHERE revoked_at_ms IS NULL AND state = 'online' \
                   ORDER BY id";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    /// How many unrevoked agents are enrolled in `region` (online or not).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn count_agents_in_region(&self, region: &str) -> Result<usize, StoreError> {
        let sql = "SELECT COUNT(*) FROM agents WHERE region = $1 AND revoked_at_ms IS NULL";
        let (n,): (i64,) =
            on_pool!(self, pool => sqlx::query_as(sql).bind(region).fetch_one(pool).await?);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Marks an agent revoked; returns false when it does not exist or was revoked before.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn revoke_agent(&self, id: &str) -> Result<bool, StoreError> {
        let sql = "UPDATE agents SET revoked_at_ms = $2, state = 'offline' WHERE id = $1 AND revoked_at_ms IS NULL";
        let n = on_pool!(self, pool => sqlx::query(sql).bind(id).bind(now_ms()).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// The ids of every revoked agent.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn revoked_agent_ids(&self) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT id FROM agents WHERE revoked_at_ms IS NOT NULL";
        let rows: Vec<(String,)> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Records a renewed client certificate of an agent (serial and expiry); returns false
    /// for unknown or revoked agents.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn set_agent_cert(
        &self,
        id: &str,
        serial_hex: &str,
        not_after_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE agents SET cert_serial = $2, cert_not_after_ms = $3 \
                   WHERE id = $1 AND revoked_at_ms IS NULL";
        let n = on_pool!(self, pool => sqlx::query(sql).bind(id).bind(serial_hex).bind(not_after_ms).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// The earliest certificate expiry among agents that are not revoked, if any.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn soonest_cert_expiry_ms(&self) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT MIN(cert_not_after_ms) FROM agents WHERE revoked_at_ms IS NULL";
        Ok(on_pool!(self, pool => sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(pool).await?))
    }

    /// Sets an agent's connection state; returns false for unknown or revoked agents.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn set_agent_state(
        &self,
        id: &str,
        state: vantage_mqtt::NodeState,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE agents SET state = $2, last_seen_ms = $3 WHERE id = $1 AND revoked_at_ms IS NULL";
        let n = on_pool!(self, pool => sqlx::query(sql).bind(id).bind(state.as_str()).bind(now_ms()).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Records the facts of a hello; returns what the store holds for the agent after it
    /// (`None` when the agent is unknown), so the caller can tell a rewound agent.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn record_hello(
        &self,
        id: &str,
        hello: &vantage_mqtt::Hello,
    ) -> Result<Option<HelloRecorded>, StoreError> {
        // A `next_seq` at or below the stored high-water mark means the agent's state was
        // rewound: the reused seqs are held until its next hello that is not rewound
        // ([`Store::held_seqs`]). A rewound hello after a rewound hello keeps the lower
        // start: rows numbered between the two, which the agent may still hold unrenumbered
        // (its seq command lost with its connection), stay held. SET sees the row as it
        // was, so `last_seq` and `held_seq_from` here are the stored ones.
        let sql = "UPDATE agents SET hostname = $2, arch = $3, os = $4, version = $5, boot_id = $6, \
                   last_seen_ms = $7, next_seq = $8, \
                   held_seq_from = CASE WHEN last_seq > 0 AND $8 <= last_seq THEN \
                       CASE WHEN held_seq_from IS NOT NULL AND held_seq_from < $8 THEN held_seq_from ELSE $8 END END, \
                   held_seq_to = CASE WHEN last_seq > 0 AND $8 <= last_seq THEN last_seq END \
                   WHERE id = $1 RETURNING last_seq, held_seq_from, held_seq_to";
        let row: Option<(i64, Option<i64>, Option<i64>)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(id)
            .bind(&hello.hostname)
            .bind(&hello.arch)
            .bind(&hello.os)
            .bind(&hello.version)
            .bind(&hello.boot_id)
            .bind(now_ms())
            // A next_seq past i64 holds nothing (the caller sends no RaiseSeq for it either).
            .bind(i64::try_from(hello.next_seq).unwrap_or(i64::MAX))
            .fetch_optional(pool)
            .await?);
        Ok(row.map(|(last_seq, from, to)| HelloRecorded {
            last_seq: last_seq.max(0) as u64,
            held: from
                .zip(to)
                .map(|(from, to)| (from.max(0) as u64, to.max(0) as u64)),
        }))
    }

    /// The seqs held back per agent: those a rewound agent reused, from its last hello
    /// ([`Store::record_hello`]) until its next. Usually none.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn held_seqs(&self) -> Result<HashMap<String, (u64, u64)>, StoreError> {
        let sql = "SELECT id, held_seq_from, held_seq_to FROM agents \
                   WHERE held_seq_to IS NOT NULL AND held_seq_from IS NOT NULL";
        let rows: Vec<(String, i64, i64)> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(id, from, to)| (id, (from.max(0) as u64, to.max(0) as u64)))
            .collect())
    }

    /// Records many agents' heartbeats (the newest of each, with the time ingest received
    /// it) in one transaction; returns the agents a heartbeat brought back online (marked
    /// offline, not revoked, and not marked so after the heartbeat was received: a status
    /// write sets `last_seen_ms`; with replicas another replica may have recorded the agent's
    /// offline last will while this heartbeat waited) and, with [`LockedAgents::Skip`], the
    /// agents whose heartbeats were not written because another transaction holds their row.
    ///
    /// # Errors
    /// Database errors only; nothing is recorded then.
    pub async fn record_heartbeats(
        &self,
        heartbeats: &[(&str, &vantage_mqtt::Heartbeat, i64)],
        locked: LockedAgents,
    ) -> Result<HeartbeatsRecorded, StoreError> {
        if heartbeats.is_empty() {
            return Ok(HeartbeatsRecorded::default());
        }
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                // The rows locked in id order first, as ingest locks them: no deadlock. NO KEY
                // UPDATE, as a plain UPDATE takes: it does not block assignment rows' foreign
                // keys. SKIP LOCKED never waits, so it joins no cycle either.
                let ids: Vec<&str> = heartbeats.iter().map(|(id, _, _)| *id).collect();
                let lock = match locked {
                    LockedAgents::Wait => {
                        "SELECT id FROM agents WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
                    }
                    LockedAgents::Skip => {
                        "SELECT id FROM agents WHERE id = ANY($1) ORDER BY id \
                         FOR NO KEY UPDATE SKIP LOCKED"
                    }
                };
                let held: HashSet<String> = sqlx::query_scalar(lock)
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
                let (heartbeats, skipped): (Vec<_>, Vec<_>) =
                    heartbeats.iter().partition(|(id, _, _)| {
                        matches!(locked, LockedAgents::Wait) || held.contains(*id)
                    });
                let skipped: Vec<String> = skipped
                    .into_iter()
                    .map(|(id, _, _)| (*id).to_owned())
                    .collect();
                let ids: Vec<&str> = heartbeats.iter().map(|(id, _, _)| *id).collect();
                let counter = |f: fn(&vantage_mqtt::Heartbeat) -> u64| {
                    heartbeats
                        .iter()
                        .map(|(_, h, _)| clamp(f(h)))
                        .collect::<Vec<i64>>()
                };
                let back: Vec<String> = sqlx::query_scalar(
                    "UPDATE agents SET state = 'online' FROM UNNEST($1::text[], $2::bigint[]) AS u(a, r) \
                     WHERE agents.id = u.a AND agents.state = 'offline' AND agents.revoked_at_ms IS NULL \
                     AND (agents.last_seen_ms IS NULL OR agents.last_seen_ms <= u.r) RETURNING agents.id",
                )
                .bind(&ids)
                .bind(heartbeats.iter().map(|(_, _, r)| *r).collect::<Vec<i64>>())
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE agents SET last_seen_ms = GREATEST(COALESCE(agents.last_seen_ms, 0), u.r), \
                     spool_dropped_total = u.d, spool_unsendable_total = u.n, spool_write_errors_total = u.w \
                     FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) \
                     AS u(a, r, d, n, w) WHERE agents.id = u.a",
                )
                .bind(&ids)
                .bind(heartbeats.iter().map(|(_, _, r)| *r).collect::<Vec<i64>>())
                .bind(counter(|h| h.spool_dropped_total))
                .bind(counter(|h| h.spool_unsendable_total))
                .bind(counter(|h| h.spool_write_errors_total))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(HeartbeatsRecorded { back, skipped })
            }
            // One writer, no row locks: everything is written.
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                let mut back = Vec::new();
                for (id, heartbeat, received) in heartbeats {
                    back.extend(
                        sqlx::query_scalar::<_, String>(
                            "UPDATE agents SET state = 'online' WHERE id = $1 AND state = 'offline' \
                             AND revoked_at_ms IS NULL AND (last_seen_ms IS NULL OR last_seen_ms <= $2) \
                             RETURNING id",
                        )
                        .bind(id)
                        .bind(received)
                        .fetch_optional(&mut *tx)
                        .await?,
                    );
                    sqlx::query(
                        "UPDATE agents SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), $2), \
                         spool_dropped_total = $3, spool_unsendable_total = $4, \
                         spool_write_errors_total = $5 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(received)
                    .bind(clamp(heartbeat.spool_dropped_total))
                    .bind(clamp(heartbeat.spool_unsendable_total))
                    .bind(clamp(heartbeat.spool_write_errors_total))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(HeartbeatsRecorded {
                    back,
                    skipped: Vec::new(),
                })
            }
        }
    }

    /// Marks an agent offline only if it is online and silent since `cutoff_ms`; returns
    /// whether it did (a heartbeat that arrived meanwhile wins).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn mark_offline_if_silent(
        &self,
        id: &str,
        cutoff_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE agents SET state = 'offline' WHERE id = $1 AND state = 'online' \
                   AND (last_seen_ms IS NULL OR last_seen_ms < $2)";
        let n = on_pool!(self, pool => sqlx::query(sql).bind(id).bind(cutoff_ms).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Stores the config `make` writes for the next revision and returns both; when `make`
    /// declines (`None`), nothing is stored and the revision stays.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn bump_desired_config(
        &self,
        id: &str,
        make: impl FnOnce(i64) -> Option<String>,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let sql = "SELECT config_revision FROM agents WHERE id = $1";
        let (revision,): (i64,) =
            on_pool!(self, pool => sqlx::query_as(sql).bind(id).fetch_one(pool).await?);
        let revision = revision + 1;
        let Some(config) = make(revision) else {
            return Ok(None);
        };
        let sql = "UPDATE agents SET config_revision = $2, desired_config = $3 WHERE id = $1";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(revision).bind(&config).execute(pool).await?.rows_affected());
        Ok(Some((revision, config)))
    }

    /// Every live agent's stored desired config, to republish retained at start.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn desired_configs(&self) -> Result<Vec<StoredConfig>, StoreError> {
        let sql = "SELECT id AS agent_id, desired_config AS config_json FROM agents WHERE revoked_at_ms IS NULL AND desired_config IS NOT NULL";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    // ---- checks --------------------------------------------------------------------------

    /// Inserts a check.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id is taken.
    pub async fn insert_check(&self, check: &CheckRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO checks (id, name, kind, spec, interval_s, timeout_ms, regions, quorum, \
                   retries, recovery, agents_per_region, depends_on, enabled, created_at_ms, updated_at_ms, labels, anomaly_z) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
        let (kind, spec, regions, depends_on, labels) = check.encoded_columns();
        let outcome = on_pool!(self, pool => sqlx::query(sql)
            .bind(&check.id)
            .bind(&check.name)
            .bind(kind)
            .bind(&spec)
            .bind(i64::from(check.interval_s))
            .bind(i64::from(check.timeout_ms))
            .bind(&regions)
            .bind(i64::from(check.quorum))
            .bind(i64::from(check.retries))
            .bind(i64::from(check.recovery))
            .bind(i64::from(check.agents_per_region))
            .bind(&depends_on)
            .bind(check.enabled)
            .bind(check.created_at_ms)
            .bind(check.updated_at_ms)
            .bind(&labels)
            .bind(check.anomaly_z)
            .execute(pool)
            .await
            .map(|_| ()));
        match outcome {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict {
                what: "check",
                id: check.id.clone(),
            }),
            other => Ok(other?),
        }
    }

    /// Replaces a check's definition; returns false when it does not exist.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn update_check(&self, check: &CheckRow) -> Result<bool, StoreError> {
        let sql = "UPDATE checks SET name = $2, kind = $3, spec = $4, interval_s = $5, timeout_ms = $6, \
                   regions = $7, quorum = $8, retries = $9, recovery = $10, agents_per_region = $11, \
                   depends_on = $12, enabled = $13, updated_at_ms = $14, labels = $15, anomaly_z = $16 WHERE id = $1";
        let (kind, spec, regions, depends_on, labels) = check.encoded_columns();
        let n = on_pool!(self, pool => sqlx::query(sql)
            .bind(&check.id)
            .bind(&check.name)
            .bind(kind)
            .bind(&spec)
            .bind(i64::from(check.interval_s))
            .bind(i64::from(check.timeout_ms))
            .bind(&regions)
            .bind(i64::from(check.quorum))
            .bind(i64::from(check.retries))
            .bind(i64::from(check.recovery))
            .bind(i64::from(check.agents_per_region))
            .bind(&depends_on)
            .bind(check.enabled)
            .bind(check.updated_at_ms)
            .bind(&labels)
            .bind(check.anomaly_z)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// One check.
    ///
    /// # Errors
    /// Database errors, or [`StoreError::Corrupt`] when the stored row does not decode.
    pub async fn get_check(&self, id: &str) -> Result<Option<CheckRow>, StoreError> {
        let sql = format!("{CHECK_COLUMNS} WHERE id = $1");
        let raw: Option<RawCheckRow> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?);
        raw.map(CheckRow::try_from)
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                what: "check",
                detail: e.to_string(),
            })
    }

    /// The checks of `ids` whose rows decode, in id order; unknown ids are left out, and so
    /// is a row that does not decode (logged and counted, as in [`Self::list_checks`]).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn get_checks(&self, ids: &[&str]) -> Result<Vec<CheckRow>, StoreError> {
        let mut raw: Vec<RawCheckRow> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_LIST_CHUNK) {
            let rows: Vec<RawCheckRow> = on_pool!(self, pool => {
                let mut query = sqlx::QueryBuilder::new(format!("{CHECK_COLUMNS} WHERE id IN ("));
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(")");
                query.build_query_as().fetch_all(pool).await?
            });
            raw.extend(rows);
        }
        raw.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(decode_checks(raw))
    }

    /// Every check whose row decodes. A row that does not is left out, logged and counted
    /// ([`CORRUPT_CHECK_ROWS`]), so one bad row never hides the others.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_checks(&self) -> Result<Vec<CheckRow>, StoreError> {
        let sql = format!("{CHECK_COLUMNS} ORDER BY id");
        let raw: Vec<RawCheckRow> =
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?);
        Ok(decode_checks(raw))
    }

    /// Every check's id, in order (no definition decoded).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn check_ids(&self) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT id FROM checks ORDER BY id";
        Ok(on_pool!(self, pool => sqlx::query_scalar(sql).fetch_all(pool).await?))
    }

    /// Deletes a check (its assignments go with it); returns whether it existed.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delete_check(&self, id: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM checks WHERE id = $1";
        let n =
            on_pool!(self, pool => sqlx::query(sql).bind(id).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Forgets the latest-status rows of a deleted check.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delete_check_status(&self, id: &str) -> Result<(), StoreError> {
        let sql = "DELETE FROM check_status WHERE check_id = $1";
        on_pool!(self, pool => sqlx::query(sql).bind(id).execute(pool).await?.rows_affected());
        Ok(())
    }

    /// Applies a change of the assignments in one transaction: removes the (check, agent)
    /// pairs in `removed`, inserts the (check, agent, region) rows in `added`, both in
    /// batches.
    ///
    /// # Errors
    /// Database errors only; nothing changes then.
    pub async fn change_assignments(
        &self,
        added: &[(String, String, String)],
        removed: &[(String, String)],
    ) -> Result<(), StoreError> {
        if added.is_empty() && removed.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in removed.chunks(ASSIGNMENT_CHUNK_ROWS) {
                let mut query = sqlx::QueryBuilder::new(
                    "DELETE FROM assignments WHERE (check_id, agent_id) IN (",
                );
                query.push_values(chunk, |mut row, (check, agent)| {
                    row.push_bind(check.as_str()).push_bind(agent.as_str());
                });
                query.push(")");
                query.build().execute(&mut *tx).await?;
            }
            for chunk in added.chunks(ASSIGNMENT_CHUNK_ROWS) {
                let mut query =
                    sqlx::QueryBuilder::new("INSERT INTO assignments (check_id, agent_id, region) ");
                query.push_values(chunk, |mut row, (check, agent, region)| {
                    row.push_bind(check.as_str())
                        .push_bind(agent.as_str())
                        .push_bind(region.as_str());
                });
                query.push(" ON CONFLICT DO NOTHING");
                query.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Every assignment as (check id, agent id, region).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_assignments(&self) -> Result<Vec<AssignmentRow>, StoreError> {
        let sql = "SELECT check_id, agent_id, region FROM assignments ORDER BY check_id, agent_id";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    // ---- queries -------------------------------------------------------------------------

    /// Results matching `filter`, newest first.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn query_results(&self, filter: &SeriesFilter) -> Result<Vec<ResultRow>, StoreError> {
        let sql = "SELECT agent_id, seq, check_id, region, measured_at_ms, received_at_ms, ok, total_ms, \
                   status_code, reason, dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, result_values FROM results \
                   WHERE ($1 IS NULL OR agent_id = $1) AND ($2 IS NULL OR check_id = $2) \
                   AND ($3 IS NULL OR region = $3) AND measured_at_ms >= $4 AND measured_at_ms <= $5 \
                   AND day_ms >= $7 AND day_ms <= $5 \
                   ORDER BY measured_at_ms DESC, seq DESC LIMIT $6";
        Ok(on_pool!(self, pool => sqlx::query_as(sql)
            .bind(&filter.agent)
            .bind(&filter.check)
            .bind(&filter.region)
            .bind(filter.from_ms)
            .bind(filter.to_ms)
            .bind(filter.limit)
            .bind(packs::day_start(filter.from_ms))
            .fetch_all(pool)
            .await?))
    }

    /// Host metrics matching `filter` (the check field is ignored), newest first.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn query_metrics(
        &self,
        filter: &SeriesFilter,
    ) -> Result<Vec<MetricsRow>, StoreError> {
        let sql = "SELECT agent_id, seq, region, measured_at_ms, received_at_ms, cpu_pct, mem_total_bytes, \
                   mem_used_bytes, swap_total_bytes, swap_used_bytes, load1, load5, load15, uptime_s, \
                   net_rx_bytes_per_s, net_tx_bytes_per_s, detail FROM host_metrics \
                   WHERE ($1 IS NULL OR agent_id = $1) AND ($2 IS NULL OR region = $2) \
                   AND measured_at_ms >= $3 AND measured_at_ms <= $4 AND day_ms >= $6 AND day_ms <= $4 \
                   ORDER BY measured_at_ms DESC, seq DESC LIMIT $5";
        Ok(on_pool!(self, pool => sqlx::query_as(sql)
            .bind(&filter.agent)
            .bind(&filter.region)
            .bind(filter.from_ms)
            .bind(filter.to_ms)
            .bind(filter.limit)
            .bind(packs::day_start(filter.from_ms))
            .fetch_all(pool)
            .await?))
    }

    /// The latest result per (check, region).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn list_check_status(&self) -> Result<Vec<CheckStatusRow>, StoreError> {
        let sql = "SELECT check_id, region, agent_id, ok, reason, total_ms, measured_at_ms FROM check_status \
                   ORDER BY check_id, region";
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }

    /// Marks every agent offline: at start nobody is connected yet.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn mark_all_offline(&self) -> Result<(), StoreError> {
        let sql = "UPDATE agents SET state = 'offline' WHERE state <> 'offline'";
        on_pool!(self, pool => sqlx::query(sql).execute(pool).await?.rows_affected());
        Ok(())
    }
}

const AGENT_COLUMNS: &str = "SELECT id, region, labels, hostname, arch, os, version, cert_serial, \
    cert_not_after_ms, state, last_seen_ms, enrolled_at_ms, revoked_at_ms, config_revision, last_seq, \
    next_seq, spool_dropped_total, spool_unsendable_total, spool_write_errors_total, boot_id FROM agents";

const CHECK_COLUMNS: &str = "SELECT id, name, spec, interval_s, timeout_ms, regions, quorum, retries, \
    recovery, agents_per_region, depends_on, labels, anomaly_z, enabled, created_at_ms, updated_at_ms FROM checks";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection of the SQLite pool runs with the page cache and the process-wide
    /// heap limit set above (SQLite ignores a pragma it does not know, so this reads them
    /// back).
    #[tokio::test]
    async fn sqlite_connections_carry_the_cache_and_the_heap_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(None, dir.path()).await.unwrap();
        let Store::Sqlite(pool) = &store else {
            panic!("no database URL opens SQLite");
        };
        let mut held = Vec::new();
        for _ in 0..SQLITE_CONNECTIONS {
            let mut connection = pool.acquire().await.unwrap();
            let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&mut *connection)
                .await
                .unwrap();
            assert_eq!(cache.to_string(), SQLITE_CACHE_KIB);
            let limit: i64 = sqlx::query_scalar("PRAGMA soft_heap_limit")
                .fetch_one(&mut *connection)
                .await
                .unwrap();
            assert_eq!(limit.to_string(), SQLITE_SOFT_HEAP_BYTES);
            held.push(connection);
        }
    }

    /// A hello whose `next_seq` is at or below the stored high-water mark holds the reused
    /// seqs in the store (so every replica's ingest sees them) until the agent's next hello;
    /// a batch loses exactly the held agent's rows in that range.
    #[tokio::test]
    async fn a_rewound_hello_holds_the_reused_seqs_until_the_next_hello() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(None, dir.path()).await.unwrap();
        store.migrate().await.unwrap();
        store.ensure_region("europe").await.unwrap();
        let Store::Sqlite(pool) = &store else {
            panic!("no database URL opens SQLite");
        };
        sqlx::query(
            "INSERT INTO agents (id, region, labels, hostname, arch, os, version, cert_serial, \
             cert_not_after_ms, state, enrolled_at_ms, last_seq) \
             VALUES ('ag-1', 'europe', '{}', 'h', 'x86_64', 'linux', '1', '00', 0, 'offline', 0, 100)",
        )
        .execute(pool)
        .await
        .unwrap();
        let hello = |next_seq: u64| vantage_mqtt::Hello {
            v: vantage_mqtt::PROTOCOL_VERSION,
            version: "1".into(),
            arch: "x86_64".into(),
            os: "linux".into(),
            hostname: "h".into(),
            labels: BTreeMap::new(),
            capabilities: Vec::new(),
            boot_id: "b".into(),
            next_seq,
            config_revision: 0,
        };
        let recorded = |held| {
            Some(HelloRecorded {
                last_seq: 100,
                held,
            })
        };
        assert_eq!(
            store.record_hello("ag-1", &hello(101)).await.unwrap(),
            recorded(None)
        );
        assert!(store.held_seqs().await.unwrap().is_empty());
        assert_eq!(
            store.record_hello("ag-1", &hello(40)).await.unwrap(),
            recorded(Some((40, 100)))
        );
        // Rewound again before renumbering (it measured rows 40..45 meanwhile): the range
        // keeps its start.
        assert_eq!(
            store.record_hello("ag-1", &hello(45)).await.unwrap(),
            recorded(Some((40, 100)))
        );
        let held = store.held_seqs().await.unwrap();
        assert_eq!(held, HashMap::from([("ag-1".to_owned(), (40, 100))]));

        let row = |seq: u64| -> vantage_mqtt::CheckResult {
            serde_json::from_value(serde_json::json!({"seq": seq, "measured_at_ms": 1,
                "check_id": "web", "ok": true, "reason": "ok",
                "timings": {"total_ms": 1.0}}))
            .unwrap()
        };
        let mut batch = models::IngestBatch::default();
        for (agent, seq) in [
            ("ag-1", 39),
            ("ag-1", 40),
            ("ag-1", 100),
            ("ag-1", 101),
            ("ag-2", 50),
        ] {
            batch
                .results
                .push((agent.into(), "europe".into(), row(seq)));
        }
        assert_eq!(batch.hold(&held), 2);
        let left: Vec<(&str, u64)> = batch
            .results
            .iter()
            .map(|(a, _, r)| (a.as_str(), r.seq))
            .collect();
        assert_eq!(left, [("ag-1", 39), ("ag-1", 101), ("ag-2", 50)]);

        // The next hello (renumbered: past the stored rows) releases the range.
        assert_eq!(
            store.record_hello("ag-1", &hello(101)).await.unwrap(),
            recorded(None)
        );
        assert_eq!(
            store.record_hello("ag-2", &hello(101)).await.unwrap(),
            None,
            "an unknown agent"
        );
        assert!(store.held_seqs().await.unwrap().is_empty());
    }

    /// A resend that shares a batch with its first send is kept once, per table.
    #[test]
    fn a_batch_keeps_each_agents_seq_once() {
        let row = |seq: u64, reason: &str| -> vantage_mqtt::CheckResult {
            serde_json::from_value(serde_json::json!({"seq": seq, "measured_at_ms": 1,
                "check_id": "web", "ok": true, "reason": reason,
                "timings": {"total_ms": 1.0}}))
            .unwrap()
        };
        let mut batch = models::IngestBatch::default();
        for (agent, seq, reason) in [
            ("a", 1, "first"),
            ("a", 2, "x"),
            ("a", 1, "again"),
            ("b", 1, "y"),
        ] {
            batch
                .results
                .push((agent.into(), "eu".into(), row(seq, reason)));
        }
        assert_eq!(batch.dedup(), 1);
        let left: Vec<(&str, u64, &str)> = batch
            .results
            .iter()
            .map(|(a, _, r)| (a.as_str(), r.seq, r.reason.as_str()))
            .collect();
        assert_eq!(left, [("a", 1, "first"), ("a", 2, "x"), ("b", 1, "y")]);
        assert_eq!(batch.dedup(), 0);
        assert_eq!(
            batch.seqs_per_agent(),
            BTreeMap::from([("a".to_owned(), vec![1, 2]), ("b".to_owned(), vec![1])])
        );
        assert_eq!(
            batch.max_seq_per_agent(),
            BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 1)])
        );
    }
}
