//! The live feed's SQL across replicas sharing PostgreSQL: each replica NOTIFYs its committed
//! updates on [`CHANNEL`] from a connection of its own ([`LiveSender`]) and LISTENs on another
//! ([`LiveListener`]), named [`LISTENER_NAME`] so a sender can tell whether any other replica
//! listens at all, and a starting replica whether others serve the store. SQLite has no
//! replicas: nothing here exists there (no replica listens).

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{Store, StoreError};

/// The NOTIFY channel of the live feed.
pub const CHANNEL: &str = "vantage_live";

/// The most a NOTIFY payload may hold here (PostgreSQL refuses 8000 bytes and more).
pub const MAX_PAYLOAD_BYTES: usize = 7900;

/// The `application_name` of every replica's listening session.
pub const LISTENER_NAME: &str = "vantage live";

/// Sends live updates to the other replicas.
pub struct LiveSender {
    pool: PgPool,
}

/// Receives the live updates replicas send (its own included).
pub struct LiveListener {
    listener: PgListener,
    // Held so the listener can reconnect through it.
    _pool: PgPool,
}

impl Store {
    /// Opens the live feed's sessions: `None` on SQLite.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub async fn live_sessions(&self) -> Result<Option<(LiveSender, LiveListener)>, StoreError> {
        let Store::Postgres(pool) = self else {
            return Ok(None);
        };
        let options = (*pool.connect_options()).clone();
        let one = || PgPoolOptions::new().max_connections(1).min_connections(0);
        let sender = one()
            .connect_with(options.clone().application_name("vantage live sender"))
            .await?;
        let listen_pool = one()
            .connect_with(options.application_name(LISTENER_NAME))
            .await?;
        let mut listener = PgListener::connect_with(&listen_pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some((
            LiveSender { pool: sender },
            LiveListener {
                listener,
                _pool: listen_pool,
            },
        )))
    }
}

impl Store {
    /// How many replicas' listening sessions are connected to this database now: 0 on
    /// SQLite (one process's store). A replica asks before opening its own, so at start
    /// this counts the others.
    ///
    /// # Errors
    /// Database errors.
    pub async fn replicas_listening(&self) -> Result<i64, StoreError> {
        let Store::Postgres(pool) = self else {
            return Ok(0);
        };
        Ok(listeners_on(pool).await?)
    }
}

/// The count of [`LISTENER_NAME`] sessions on `pool`'s database.
async fn listeners_on(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(LISTENER_NAME)
    .fetch_one(pool)
    .await
}

impl LiveSender {
    /// How many replicas' listening sessions are connected to this database, this one's
    /// included.
    ///
    /// # Errors
    /// Database errors.
    pub async fn listeners(&self) -> Result<i64, StoreError> {
        Ok(listeners_on(&self.pool).await?)
    }

    /// Sends one payload (at most [`MAX_PAYLOAD_BYTES`]).
    ///
    /// # Errors
    /// Database errors, an oversize payload among them.
    pub async fn notify(&self, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl LiveListener {
    /// The next payload; a lost connection is reopened on the way (what was sent meanwhile is
    /// not received).
    ///
    /// # Errors
    /// The database cannot be reached.
    pub async fn recv(&mut self) -> Result<String, StoreError> {
        Ok(self.listener.recv().await?.payload().to_owned())
    }
}
