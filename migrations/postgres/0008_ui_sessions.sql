-- Dashboard sessions: a browser that signed in with an API token holds a random session
-- secret in an HttpOnly cookie; only its hash is stored. A session acts with its token's role
-- and ends when it expires, when the browser signs out, or when the token is revoked.
CREATE TABLE ui_sessions (
    secret_hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX ui_sessions_token ON ui_sessions(token_id);
