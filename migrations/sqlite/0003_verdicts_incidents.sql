-- Verdicts across regions, incidents and the notification outbox.

-- Consecutive failures before a region counts as failing, successes before it is up again,
-- agents per region that run the check, and the checks this one depends on (JSON array).
-- quorum 0 means a majority of the check's regions.
ALTER TABLE checks ADD COLUMN retries BIGINT NOT NULL DEFAULT 2;
ALTER TABLE checks ADD COLUMN recovery BIGINT NOT NULL DEFAULT 2;
ALTER TABLE checks ADD COLUMN agents_per_region BIGINT NOT NULL DEFAULT 1;
ALTER TABLE checks ADD COLUMN depends_on TEXT NOT NULL DEFAULT '[]';
-- Labels (JSON object): for filters and maintenance windows.
ALTER TABLE checks ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
-- Response-time anomaly alerts: the z-score that counts as anomalous (0: off).
ALTER TABLE checks ADD COLUMN anomaly_z DOUBLE PRECISION NOT NULL DEFAULT 0;

-- Each check's current verdict (the JSON of the retained status/checks/{check} message).
CREATE TABLE check_verdicts (
    check_id TEXT PRIMARY KEY REFERENCES checks(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    view TEXT NOT NULL
);

-- Every verdict change with its evidence.
CREATE TABLE verdict_transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    check_id TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX verdict_transitions_check ON verdict_transitions(check_id, at_ms);

CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    title TEXT NOT NULL,
    open BOOLEAN NOT NULL,
    dependent BOOLEAN NOT NULL DEFAULT FALSE,
    opened_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT,
    acknowledged_at_ms BIGINT,
    acknowledged_by TEXT,
    -- Changes so far: numbers each change, so each notification has its own dedup key.
    n_changes BIGINT NOT NULL DEFAULT 0
);
-- At most one open incident per subject.
CREATE UNIQUE INDEX incidents_one_open ON incidents(subject, subject_id) WHERE open;
CREATE INDEX incidents_opened ON incidents(opened_at_ms);

-- The timeline of each incident.
CREATE TABLE incident_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    at_ms BIGINT NOT NULL,
    change TEXT NOT NULL,
    text TEXT NOT NULL,
    author TEXT NOT NULL DEFAULT ''
);
CREATE INDEX incident_events_incident ON incident_events(incident_id, id);

-- Notification channels; config is JSON and holds the channel's secrets.
CREATE TABLE channels (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    -- Reminders while an incident stays open and unacknowledged (0: none).
    reminder_s BIGINT NOT NULL DEFAULT 0,
    -- Deliveries per hour at most; more wait their turn (0: no limit).
    max_per_hour BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Maintenance windows: one-off (starts_at_ms..ends_at_ms) or weekly (days, start minute of
-- the day in UTC, duration), scoped to checks, check labels, regions or agent labels (JSON).
CREATE TABLE maintenance_windows (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Host-metric rules (threshold with duration, disk-full forecast) by agent selector (JSON).
CREATE TABLE metric_rules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- The notification outbox: one row per (incident change, channel), written in the transaction
-- of the change itself. Rows of one (incident, channel) are delivered in id order.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key TEXT NOT NULL UNIQUE,
    incident_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    change TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT
);
CREATE INDEX outbox_state ON outbox(state, incident_id, channel_id, id);
