//! Dashboard sessions: made from an API token at sign-in, found by the hash of their secret,
//! ended at sign-out, expiry or the token's revocation. Bounded: expired sessions are purged
//! at every sign-in and a token keeps at most [`SESSIONS_PER_TOKEN`] live ones.

use super::models::TokenIdentity;
use super::{BeginWrite, Role, Store, StoreError, hash_secret, now_ms, on_pool, random_id};

/// Live sessions one API token may hold; signing in again ends the oldest.
pub const SESSIONS_PER_TOKEN: i64 = 20;

impl Store {
    /// Makes a session for the API token `token_id` lasting `ttl_ms` and returns its secret
    /// (for the cookie; only its hash is stored).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn create_session(&self, token_id: &str, ttl_ms: i64) -> Result<String, StoreError> {
        let secret = random_id("vs_", 32);
        let now = now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM ui_sessions WHERE expires_at_ms <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "DELETE FROM ui_sessions WHERE token_id = $1 AND created_at_ms < (SELECT created_at_ms \
                 FROM ui_sessions WHERE token_id = $1 ORDER BY created_at_ms DESC LIMIT 1 OFFSET $2)",
            )
            .bind(token_id)
            .bind(SESSIONS_PER_TOKEN - 2)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO ui_sessions (secret_hash, token_id, created_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(hash_secret(&secret))
            .bind(token_id)
            .bind(now)
            .bind(now + ttl_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(secret)
    }

    /// The token a live session acts for, if the session exists, has not expired and its
    /// token is not revoked.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn session(&self, secret: &str) -> Result<Option<TokenIdentity>, StoreError> {
        let sql = "SELECT t.id, t.role FROM ui_sessions s JOIN api_tokens t ON t.id = s.token_id \
                   WHERE s.secret_hash = $1 AND s.expires_at_ms > $2 AND t.revoked_at_ms IS NULL";
        let found: Option<(String, String)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(hash_secret(secret))
            .bind(now_ms())
            .fetch_optional(pool)
            .await?);
        Ok(found.and_then(|(id, role)| {
            Some(TokenIdentity {
                id,
                role: Role::parse(&role)?,
            })
        }))
    }

    /// Ends a session; returns whether it existed.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn delete_session(&self, secret: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM ui_sessions WHERE secret_hash = $1";
        let n = on_pool!(self, pool => sqlx::query(sql)
            .bind(hash_secret(secret))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }
}
