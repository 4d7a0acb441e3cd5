-- Tributary PostgreSQL schema, migration 7: readings in chunks. A commit
-- writes one row per series (up to CHUNK_POINTS points, all within one
-- aligned minute of device time: chunks.rs) with its
-- points as arrays, sorted by device time, instead of one row per reading:
-- the (series_id, ts_ns) B-tree insert per reading was what bounded ingest
-- (BENCHMARKS.md "ingest on PostgreSQL"), a chunk row needs one index entry
-- for ~10 readings. Additive: rows already in `readings` stay there and
-- every read is the union of both tables; new readings go only here.
--
-- Element i of each array is point i. kind as in `readings`; v_f64, v_i64
-- and v_text hold the value where the kind uses them and NULL elsewhere,
-- and are NULL as a whole when no point of the row uses them. ts_min and
-- ts_max are the first and last ts_ns, less than a minute apart. A read
-- of [start, end] takes the rows with ts_max in [start, end + 1 min) (a
-- bounded range of the index) and ts_min <= end, then filters the points. Retention removes whole rows whose ts_max is older than the
-- cutoff (a row straddling it stays until its newest point expires). A
-- BRIN index on ts_max (plain table) or a hypertable on ts_max (with
-- TimescaleDB) is added by the collector.
CREATE TABLE readings_chunks (
    series_id   BIGINT     NOT NULL,
    ts_min      BIGINT     NOT NULL,
    ts_max      BIGINT     NOT NULL,
    ts_ns       BIGINT[]   NOT NULL,
    received_ns BIGINT[]   NOT NULL,
    kind        SMALLINT[] NOT NULL,
    v_f64       DOUBLE PRECISION[],
    v_i64       BIGINT[],
    v_text      TEXT[]
);
CREATE INDEX readings_chunks_by_series_ts ON readings_chunks (series_id, ts_max);

-- The readings of numeric kinds (as the view below) whose device time is
-- in [from_ns, to_ns] (nanoseconds since the epoch), with the view's
-- columns: the bounds reach the indexes of both tables (the chunk rows'
-- BRIN on ts_max or their (series_id, ts_max) B-tree), so a Grafana panel
-- over a time range reads only the rows that overlap it:
-- `FROM tributary_readings_between($__unixEpochNanoFrom(),
-- $__unixEpochNanoTo())`. A plain SQL function: the planner inlines it.
CREATE FUNCTION tributary_readings_between(from_ns BIGINT, to_ns BIGINT)
RETURNS TABLE (
    "time" timestamptz,
    ts_ns BIGINT,
    agent TEXT,
    device TEXT,
    metric TEXT,
    labels jsonb,
    unit TEXT,
    value DOUBLE PRECISION,
    value_exact NUMERIC
)
LANGUAGE sql STABLE
AS $$
SELECT
    timestamptz 'epoch' + (r.ts_ns / 1000) * interval '1 microsecond',
    r.ts_ns,
    s.agent,
    s.device,
    s.metric,
    s.labels::jsonb,
    s.unit,
    CASE r.kind
        WHEN 0 THEN r.v_f64
        WHEN 6 THEN (r.v_i64::numeric
            + CASE WHEN r.v_i64 < 0 THEN 18446744073709551616 ELSE 0 END)::double precision
        ELSE r.v_i64::double precision
    END,
    CASE r.kind
        WHEN 0 THEN NULL
        WHEN 6 THEN r.v_i64::numeric
            + CASE WHEN r.v_i64 < 0 THEN 18446744073709551616 ELSE 0 END
        ELSE r.v_i64::numeric
    END
FROM (
    SELECT o.series_id, o.ts_ns, o.kind, o.v_f64, o.v_i64 FROM readings o
    WHERE o.ts_ns >= from_ns AND o.ts_ns <= to_ns
    UNION ALL
    SELECT c.series_id, p.ts_ns, p.kind, p.v_f64, p.v_i64
    FROM readings_chunks c
    CROSS JOIN LATERAL unnest(c.ts_ns, c.kind, c.v_f64, c.v_i64) AS p(ts_ns, kind, v_f64, v_i64)
    -- A row's points lie within one aligned minute (chunks.rs
    -- CHUNK_SPAN_NS), so no row overlapping the range ends later than
    -- to_ns + 60 s - 1 (LEAST keeps that from overflowing).
    WHERE c.ts_max >= from_ns
      AND c.ts_max <= LEAST(to_ns, 9223372036854775807 - 59999999999) + 59999999999
      AND c.ts_min <= to_ns
      AND p.ts_ns >= from_ns AND p.ts_ns <= to_ns
) r
JOIN series s ON s.id = r.series_id
WHERE r.kind IN (0, 1, 2, 6)
$$;

-- The view keeps its columns and values: every reading of both tables,
-- through the function above over all time (inlined, so filters on the
-- series reach the series table). A filter on the view's ts_ns reaches the
-- old table's index but is applied to the chunks' points after unnesting:
-- over a time range use tributary_readings_between (README "Grafana over
-- PostgreSQL").
CREATE OR REPLACE VIEW tributary_readings AS
SELECT * FROM tributary_readings_between(-9223372036854775808, 9223372036854775807);
