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
    batches_resent       INTEGER NOT NULL DEFAULT 0,
    -- Name of the collector that accepted its newest stream. Added after
    -- version 1: last, as `upgrade` (write.rs) adds it to an older file.
    collector            TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;

-- The delivery contract: the committed sequences per (agent, epoch), written
-- in the same transaction as the readings they cover: every sequence up to
-- `committed_seq`, plus `committed_ranges` above it (NULL: none; else the
-- encoding of store/committed.rs: a format byte, then per range the gap below
-- it and its length as LEB128 numbers). `dropped` and `last_seq` are what
-- the agent last reported: readings its spool dropped when full, and the
-- newest sequence it has spooled (lag = last_seq - committed_seq).
CREATE TABLE IF NOT EXISTS epochs (
    agent         TEXT    NOT NULL,
    epoch         INTEGER NOT NULL,
    committed_seq INTEGER NOT NULL,
    dropped       INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    -- Added after version 1: last, as `upgrade` (write.rs) adds it to an
    -- older file.
    committed_ranges BLOB,
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

-- Readings live in two places (see store/sqlite/compact.rs); each reading is
-- in exactly one of them in every snapshot. Blobs are columnar, encoded by
-- store/sqlite/codec.rs (kind codes: 0 f64, 1 i64, 2 bool, 3 string, 4 poll timeout,
-- 5 poll error, 6 u64).
--
-- The head: one row per committed batch, appended by the merger in the
-- commit's transaction (so the write path is an append whatever the series).
-- Ids are assigned by the store and never reused.
CREATE TABLE IF NOT EXISTS head (
    id          INTEGER PRIMARY KEY,
    received_ns INTEGER NOT NULL,
    min_series  INTEGER NOT NULL,
    max_series  INTEGER NOT NULL,
    min_ts      INTEGER NOT NULL,
    max_ts      INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    data        BLOB    NOT NULL,  -- (series_id, ts_ns, kind, value) per reading
    -- The agent batch of the row (the exports' message ids). Added after
    -- version 1: last, as `upgrade` (write.rs) adds them to an older file;
    -- NULL in rows written before.
    agent       TEXT,
    epoch       INTEGER,            -- u64 bits as i64
    seq         INTEGER             -- u64 bits as i64
);
-- Covering, so a reader finds the rows that may hold a series without
-- visiting every row (each row's blob fills its own pages).
CREATE INDEX IF NOT EXISTS head_by_series ON head (max_series, min_series, max_ts, min_ts);

-- Chunks: points of one series in device-time order, at most 4096 each,
-- written by compaction (rounds of the head, and merges of small chunks).
-- Ids are assigned by the store and never reused (meta 'next_chunk_id').
CREATE TABLE IF NOT EXISTS chunks (
    id        INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    min_ts    INTEGER NOT NULL,
    max_ts    INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    data      BLOB    NOT NULL     -- (ts_ns, received_ns, kind, value) per point
);
-- Covering for range planning: which chunks of a series overlap a span.
CREATE INDEX IF NOT EXISTS chunks_by_series_ts ON chunks (series_id, max_ts, min_ts, count);
-- Compaction finds a series' small chunks (below 4096 points, which it may
-- still merge) through chunks_by_series_ts, newest first; the partial index
-- earlier versions kept for them cost a B-tree write per chunk written or
-- deleted.
DROP INDEX IF EXISTS chunks_small;

-- Per series: head rows up to head_id are in chunks (their points of this
-- series must not be read from the head any more). Written by earlier
-- versions, one row per series and round; still read.
CREATE TABLE IF NOT EXISTS compacted (
    series_id INTEGER PRIMARY KEY,
    head_id   INTEGER NOT NULL
);
-- The same mark for every series id in [series_lo, series_hi]: one row per
-- compaction step (which writes a run of series in id order), instead of
-- one per series. A series' mark is the largest of both tables. A mark
-- matters only while head rows at or below it exist, so a round deletes
-- its spans with its last head rows; the table stays a few rows long.
CREATE TABLE IF NOT EXISTS compacted_span (
    head_id   INTEGER NOT NULL,
    series_lo INTEGER NOT NULL,
    series_hi INTEGER NOT NULL
);
