-- Tributary PostgreSQL schema, migration 3: the commit log the exports read
-- (store/postgres/export_log.rs; README "Exports").
--
-- One row per commit that stored readings while any export has a cursor,
-- written by whichever collector committed, in that commit's transaction.
-- Ids come from `export_log_id` under a transaction-level advisory lock
-- taken last, just before the commit: the id order is the commit order
-- across every collector sharing the database, so a reader that has seen
-- id N has seen every committed row below it.
CREATE SEQUENCE export_log_id;
CREATE TABLE export_log (
    id          BIGINT PRIMARY KEY,
    received_ns BIGINT NOT NULL,   -- the earliest batch of the commit
    count       BIGINT NOT NULL,   -- readings
    data        BYTEA  NOT NULL    -- the readings (export_log.rs `encode`)
);

-- One row per export: how far it got, and its totals. Saved by the one
-- collector that holds the export (a session advisory lock per name).
CREATE TABLE export_cursors (
    name       TEXT PRIMARY KEY,
    position   BIGINT NOT NULL,             -- the last export_log id sent (or skipped)
    inflight   BIGINT NOT NULL DEFAULT 0,   -- the last id of the page being sent
    sent       BIGINT NOT NULL DEFAULT 0,
    dropped    BIGINT NOT NULL DEFAULT 0,
    skipped    BIGINT NOT NULL DEFAULT 0,
    retried    BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
