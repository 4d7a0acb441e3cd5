-- Tributary PostgreSQL schema, migration 5: unsigned 64-bit readings
-- (SNMP Counter64). A u64 reading is stored with kind 6 and its 64 bits in
-- v_i64 (a value above 2^63 - 1 reads there as negative), so every bit is
-- kept with no new column and binary COPY stays as it is. The collector
-- turns the bits back into a u64; SQL tools should read `value` of the
-- `tributary_readings` view, which this migration teaches the kind: it
-- adds 2^64 to a negative v_i64 of kind 6 (exact in numeric, then rounded
-- to double precision like every value of the view; `value_exact` is the
-- integer itself, NULL for floats).
COMMENT ON COLUMN readings.kind IS
    '0 f64, 1 i64, 2 bool (v_i64 0/1), 3 string, 4 poll timeout, 5 poll error (v_text), 6 u64 (its bits in v_i64)';

CREATE OR REPLACE VIEW tributary_readings AS
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
        WHEN 6 THEN (r.v_i64::numeric
            + CASE WHEN r.v_i64 < 0 THEN 18446744073709551616 ELSE 0 END)::double precision
        ELSE r.v_i64::double precision
    END AS value,
    CASE r.kind
        WHEN 0 THEN NULL
        WHEN 6 THEN r.v_i64::numeric
            + CASE WHEN r.v_i64 < 0 THEN 18446744073709551616 ELSE 0 END
        ELSE r.v_i64::numeric
    END AS value_exact
FROM readings r
JOIN series s ON s.id = r.series_id
WHERE r.kind IN (0, 1, 2, 6);
