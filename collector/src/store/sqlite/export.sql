-- The commit log the exports read (store/sqlite/export_log.rs): the SQLite
-- side of migration 3. Applied when the collector starts with exports
-- (idempotent); removed when it starts without any.

-- One row per committed batch, copied from `head` in the commit's own
-- transaction. AUTOINCREMENT: ids are never reused, so a cursor (the last
-- id sent) stays valid whatever compaction does to `head`.
CREATE TABLE IF NOT EXISTS export_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ns INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    data        BLOB    NOT NULL,  -- the head row's blob (codec.rs)
    -- The head row's agent batch (NULL in rows logged before it was
    -- kept); a log from before gets these columns from `setup`.
    agent       TEXT,
    epoch       INTEGER,
    seq         INTEGER
);

-- One row per export: how far it got, and its totals.
CREATE TABLE IF NOT EXISTS export_cursors (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,   -- the last export_log id sent (or skipped)
    inflight   INTEGER NOT NULL DEFAULT 0,   -- the last id of the page being sent
    sent       INTEGER NOT NULL DEFAULT 0,   -- readings delivered
    dropped    INTEGER NOT NULL DEFAULT 0,   -- readings the destination refused (4xx)
    skipped    INTEGER NOT NULL DEFAULT 0,   -- readings passed over by max_lag
    retried    INTEGER NOT NULL DEFAULT 0,   -- requests sent again
    last_error TEXT
) WITHOUT ROWID;

-- The copy. The trim of what every cursor has passed is not here: a cursor
-- that jumps (a `max_lag` skip, a removed export) would make one commit
-- delete the whole backlog while it holds the write lock. The export tasks
-- trim in bounded pieces instead (export_log.rs `trim`). Dropped first:
-- databases from before kept the trimming trigger.
DROP TRIGGER IF EXISTS export_log_append;
CREATE TRIGGER export_log_append AFTER INSERT ON head
BEGIN
    INSERT INTO export_log (received_ns, count, data, agent, epoch, seq)
        VALUES (NEW.received_ns, NEW.count, NEW.data, NEW.agent, NEW.epoch, NEW.seq);
END;

-- What `pending` and `max_lag` read at each step: sums over the log past a
-- cursor without reading the blobs.
CREATE INDEX IF NOT EXISTS export_log_lag ON export_log (id, received_ns, count);
