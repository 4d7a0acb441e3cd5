-- Tributary SQLite schema, version 1. Applied on every start (idempotent).
-- Only the merger writes; query RPCs read through their own connections.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per agent id ever seen. Counters cover all epochs and are added to
-- (never overwritten) by each commit.
CREATE TABLE IF NOT EXISTS agents (
    id                   TEXT PRIMARY KEY,
    epoch                INTEGER NOT NULL,           -- newest spool epoch (u64 bits as i64)
    peer                 TEXT    NOT NULL DEFAULT '',
    last_seen_ns         INTEGER NOT NULL DEFAULT 0,
    readings_stored      INTEGER NOT NULL DEFAULT 0,
    batches_deduplicated INTEGER NOT NULL DEFAULT 0,
    dropped_at_agent     INTEGER NOT NULL DEFAULT 0,  -- sum of epochs.dropped, kept by each commit
    batches_resent       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The delivery contract: last committed sequence per (agent, epoch), written
-- in the same transaction as the readings it covers. `dropped` and `last_seq`
-- are what the agent last reported: readings its spool dropped when full, and
-- the newest sequence it has spooled (lag = last_seq - committed_seq).
CREATE TABLE IF NOT EXISTS epochs (
    agent         TEXT    NOT NULL,
    epoch         INTEGER NOT NULL,
    committed_seq INTEGER NOT NULL,
    dropped       INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent, epoch)
) WITHOUT ROWID;

-- Global series ids, assigned by SQLite when the merger resolves a new key.
CREATE TABLE IF NOT EXISTS series (
    id     INTEGER PRIMARY KEY,
    agent  TEXT NOT NULL,
    device TEXT NOT NULL,
    metric TEXT NOT NULL,
    labels TEXT NOT NULL,   -- canonical JSON object, keys sorted; '{}' when none
    unit   TEXT NOT NULL,
    UNIQUE (agent, device, metric, labels, unit)
);

-- One row per reading. kind: 0 f64, 1 i64, 2 bool (value 0/1), 3 string,
-- 4 poll timeout, 5 poll error (value holds the failure message).
CREATE TABLE IF NOT EXISTS readings (
    series_id   INTEGER NOT NULL,
    ts_ns       INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    kind        INTEGER NOT NULL,
    value
);
CREATE INDEX IF NOT EXISTS readings_by_series_ts ON readings (series_id, ts_ns);
