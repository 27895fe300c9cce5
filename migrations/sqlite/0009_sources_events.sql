-- Integration sources and the events they send (Zabbix webhooks, chain webhooks).
--
-- A source is one sender with its own secret: `secret_hash` finds a bearer secret's source;
-- `secret` itself is kept because checking an HMAC signature needs it (it is never served).
-- `incident_severity` (NULL: never) is the least severity of a problem that opens an
-- incident. A Zabbix source may also be polled: `poll` holds the API's URL, token and interval
-- (JSON; the token is never served) and `poll_cursor` the last Zabbix event id stored, so a
-- restarted poller catches up from there.
CREATE TABLE sources (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    secret TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    incident_severity TEXT,
    poll TEXT,
    poll_cursor BIGINT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX sources_secret ON sources(secret_hash);

-- One accepted event. `dedup_key` makes a replay a no-op: Zabbix's (event id, value), a
-- transaction's signature or hash. A resolution points at its problem (`problem_id`) and
-- the problem records when it was resolved.
CREATE TABLE source_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    external_id TEXT NOT NULL,
    status TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    host TEXT,
    node TEXT,
    occurred_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    block BIGINT,
    accounts TEXT NOT NULL,
    tags TEXT NOT NULL,
    payload TEXT NOT NULL,
    payload_truncated BOOLEAN NOT NULL,
    problem_id BIGINT,
    resolved_at_ms BIGINT,
    incident_id TEXT,
    UNIQUE (source, dedup_key)
);
CREATE INDEX source_events_received ON source_events(received_at_ms);
CREATE INDEX source_events_external ON source_events(source, external_id);

-- Hosts a source named that map to no agent: kept as nodes of their own.
CREATE TABLE external_nodes (
    source TEXT NOT NULL,
    host TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (source, host)
);
