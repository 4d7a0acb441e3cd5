-- Tributary PostgreSQL schema, migration 2: a view for SQL tools such as
-- Grafana's PostgreSQL data source (README "Grafana over PostgreSQL").
--
-- One row per numeric reading (kinds 0 f64, 1 i64, 2 bool as 0/1);
-- strings and failed polls are left out. `time` is the device time in
-- microseconds (timestamptz's precision); `ts_ns` is the same instant in
-- nanoseconds, the indexed column: filter on it (Grafana:
-- `$__unixEpochNanoFilter(ts_ns)`) and the index on (series_id, ts_ns) is
-- used, where a filter on `time` reads every reading.
CREATE VIEW tributary_readings AS
SELECT
    timestamptz 'epoch' + (r.ts_ns / 1000) * interval '1 microsecond' AS "time",
    r.ts_ns,
    s.agent,
    s.device,
    s.metric,
    s.labels::jsonb AS labels,
    s.unit,
    CASE r.kind
        WHEN 0 THEN r.v_f64
        ELSE r.v_i64::double precision
    END AS value
FROM readings r
JOIN series s ON s.id = r.series_id
WHERE r.kind IN (0, 1, 2);
