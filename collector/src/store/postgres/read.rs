//! The PostgreSQL store's read side: what the Query service asks of the
//! database, through a small pool of read-only connections (deadpool), never
//! through the merger's write connection.
//!
//! The pool bounds how many connections Query can take from the server
//! (which several collectors share) and connects lazily, so a database that
//! is down makes Query calls fail with UNAVAILABLE while ingest waits.
//! A collector serving HTTP holds two such pools, one for Query and the
//! fleet page, one for PromQL alone (`HttpContext::query_reader`,
//! `application_name` `tributary-collector promql`): up to twice
//! [`READ_CONNECTIONS`].
//!
//! `range` pages through each series by device time with one short query
//! per page, giving the connection back between pages, so a slow client
//! holds neither a connection nor a snapshot. As with SQLite, a range is not
//! one snapshot; no reading appears twice.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::{NoTls, Row};

use super::chunks::ts_max_bound;
use crate::model::{Point, SeriesMeta, StoredValue};
use crate::store::labels::{SERIES_COLUMNS, SeriesRow};
use crate::store::read::{
    MAX_CHUNK_POINTS, RangeChunk, ReadError, Selector, SeriesCensus, SeriesPage, SpanSeries,
    StoredAgent, TimeSpan, count_ranges, counter,
};
use crate::store::redact;

/// Most connections the Query service holds at once.
const READ_CONNECTIONS: usize = 4;

/// How long a Query call waits for a connection (from the pool, or a new
/// one) before it fails with UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of a reading, after whatever comes before them.
const POINT_COLUMNS: &str = "ts_ns, received_ns, kind, v_f64, v_i64, v_text";

/// The points of series `$1` with `$2 <= ts_ns <= $3`, the first `$4` by
/// device time: the old rows of `readings` and the points of the
/// `readings_chunks` rows overlapping the window, filtered exactly.
/// Columns as [`POINT_COLUMNS`].
///
/// So that a page does not unnest every chunk row up to `$3` (each page
/// of a long window would, pages times the window's points), the chunk
/// rows are first walked in `ts_max` order (the index) counting their
/// points within the window, up to the row where the count reaches `$4`:
/// its `ts_max` bounds the page (at least `$4` points are at or before
/// it; `$3` when there are fewer), and only rows with `ts_min` at or before that bound are unnested.
/// `$5` is [`ts_max_bound`]`($3)`: no row overlapping the window ends
/// later, so every step is a bounded range of the `(series_id, ts_max)`
/// index (`chunks.rs`, `CHUNK_SPAN_NS`).
const POINTS_IN_WINDOW: &str = "WITH bound AS MATERIALIZED (SELECT LEAST(COALESCE((\
       SELECT w.ts_max FROM (\
         SELECT ts_max, sum(CASE WHEN ts_min >= $2 AND ts_max <= $3 \
             THEN cardinality(ts_ns) \
             ELSE (SELECT count(*) FROM unnest(ts_ns) AS t(ts) WHERE t.ts >= $2 AND t.ts <= $3) \
           END) OVER (ORDER BY ts_max ROWS UNBOUNDED PRECEDING) AS n \
         FROM readings_chunks \
         WHERE series_id = $1 AND ts_max >= $2 AND ts_max <= $5 AND ts_min <= $3 \
         ORDER BY ts_max) w \
       WHERE w.n >= $4::bigint LIMIT 1), $3), $3) AS hi) \
     SELECT ts_ns, received_ns, kind, v_f64, v_i64, v_text \
       FROM readings WHERE series_id = $1 AND ts_ns >= $2 AND ts_ns <= $3 \
     UNION ALL \
     SELECT p.ts_ns, p.received_ns, p.kind, p.v_f64, p.v_i64, p.v_text \
       FROM bound b, readings_chunks c CROSS JOIN LATERAL \
         unnest(c.ts_ns, c.received_ns, c.kind, c.v_f64, c.v_i64, c.v_text) \
         AS p(ts_ns, received_ns, kind, v_f64, v_i64, v_text) \
       WHERE c.series_id = $1 AND c.ts_max >= $2 AND c.ts_max <= $5 AND c.ts_min <= b.hi \
         AND p.ts_ns >= $2 AND p.ts_ns <= b.hi \
     ORDER BY ts_ns LIMIT $4";

/// A pool of read-only connections. Cheap to clone.
#[derive(Clone)]
pub struct PgReader {
    pool: Pool,
    /// The URL without its password.
    store: Arc<str>,
}

impl PgReader {
    /// A pool for `url`; nothing connects until the first call. Its
    /// connections show in `pg_stat_activity` as `tributary-collector
    /// query` unless the URL names an `application_name`.
    pub fn new(url: &str) -> Result<Self, ReadError> {
        Self::named(url, "tributary-collector query")
    }

    /// [`PgReader::new`] with `application` as the connections' default
    /// `application_name` (PromQL's pool: `tributary-collector promql`).
    pub fn named(url: &str, application: &str) -> Result<Self, ReadError> {
        let store: Arc<str> = Arc::from(redact(url));
        let setup = |message: String| ReadError::Setup {
            store: store.to_string(),
            message,
        };
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| setup(format!("bad URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(application);
        }
        // Whatever options the URL has (a search_path), plus read-only.
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c default_transaction_read_only=on"),
            _ => "-c default_transaction_read_only=on".to_owned(),
        };
        config.options(&options);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection that broke is noticed when it is handed out.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(READ_CONNECTIONS)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| setup(format!("connection pool: {e}")))?;
        Ok(PgReader { pool, store })
    }

    async fn conn(&self, what: &'static str) -> Result<deadpool_postgres::Object, ReadError> {
        self.pool.get().await.map_err(|cause| ReadError::Pool {
            what,
            store: self.store.to_string(),
            cause,
        })
    }

    fn query_err(&self, what: &'static str) -> impl Fn(tokio_postgres::Error) -> ReadError + '_ {
        move |cause| ReadError::Postgres {
            what,
            store: self.store.to_string(),
            cause,
        }
    }

    /// Every agent ever seen, by id (byte order, as SQLite sorts).
    pub async fn agents(&self) -> Result<Vec<StoredAgent>, ReadError> {
        let what = "list agents";
        let conn = self.conn(what).await?;
        let rows = conn
            .query(
                "SELECT a.id, a.epoch, a.peer, a.last_seen_ns, COALESCE(e.committed_seq, 0), \
                        a.readings_stored, a.batches_deduplicated, \
                        (SELECT COALESCE(sum(d.dropped), 0)::bigint FROM epochs d WHERE d.agent = a.id), \
                        a.batches_resent, \
                        GREATEST(COALESCE(e.last_seq, 0) - COALESCE(e.committed_seq, 0), 0), \
                        a.collector, e.committed_ranges \
                 FROM agents a LEFT JOIN epochs e ON e.agent = a.id AND e.epoch = a.epoch \
                 ORDER BY a.id COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(self.query_err(what))?;
        let store = self.store.to_string();
        Ok(rows
            .iter()
            .map(|r| {
                let mut agent = StoredAgent {
                    id: r.get(0),
                    // The epoch is stored as the u64's bits in a bigint.
                    epoch: r.get::<_, i64>(1) as u64,
                    peer: r.get(2),
                    last_seen_ns: r.get(3),
                    committed_seq: counter(r.get(4)),
                    readings_stored: counter(r.get(5)),
                    batches_deduplicated: counter(r.get(6)),
                    dropped_at_agent: counter(r.get(7)),
                    batches_resent: counter(r.get(8)),
                    lag: counter(r.get(9)),
                    collector: r.get(10),
                    committed_ranges: 0,
                    error: String::new(),
                };
                let ranges: Option<Vec<u8>> = r.get(11);
                // A row that does not decode is the agent's error, not
                // the list's: the others are listed as usual.
                match count_ranges(
                    &store,
                    &agent.id,
                    agent.epoch,
                    agent.committed_seq,
                    ranges.as_deref(),
                ) {
                    Ok(n) => agent.committed_ranges = n,
                    Err(e) => agent.error = e.to_string(),
                }
                agent
            })
            .collect())
    }

    /// Stored series passing `sel`, by id.
    pub async fn series(&self, sel: &Selector) -> Result<Vec<SeriesMeta>, ReadError> {
        let all = SeriesPage {
            after_id: i64::MIN,
            limit: usize::MAX,
        };
        self.series_page(sel, all).await
    }

    /// One page of the series passing `sel`, by id.
    pub async fn series_page(
        &self,
        sel: &Selector,
        page: SeriesPage,
    ) -> Result<Vec<SeriesMeta>, ReadError> {
        let what = "list series";
        let conn = self.conn(what).await?;
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let rows = conn
            .query(
                &format!(
                    "SELECT {SERIES_COLUMNS} FROM series \
                 WHERE ($1 = '' OR agent = $1) AND ($2 = '' OR device = $2) \
                   AND ($3 = '' OR metric = $3) AND id > $4 \
                 ORDER BY id LIMIT $5"
                ),
                &[&sel.agent, &sel.device, &sel.metric, &page.after_id, &limit],
            )
            .await
            .map_err(self.query_err(what))?;
        rows.iter().map(|r| self.series_meta(r)).collect()
    }

    /// How many series are stored, and the largest id (see
    /// `Reader::series_census`).
    pub async fn series_census(&self) -> Result<SeriesCensus, ReadError> {
        let what = "count series";
        let conn = self.conn(what).await?;
        let row = conn
            .query_one(
                "SELECT (SELECT count(*) FROM series), (SELECT COALESCE(max(id), 0) FROM series)",
                &[],
            )
            .await
            .map_err(self.query_err(what))?;
        let count: i64 = row.try_get(0).map_err(self.query_err(what))?;
        Ok(SeriesCensus {
            count: counter(count),
            max_id: row.try_get(1).map_err(self.query_err(what))?,
        })
    }

    /// The series with a reading within `span` (per series one index probe
    /// of the old table and a bounded `ts_max` range of the chunk rows).
    pub async fn series_in_span(&self, span: TimeSpan) -> Result<SpanSeries, ReadError> {
        let mut out = SpanSeries::default();
        let Some((lo, hi)) = span.closed() else {
            return Ok(out);
        };
        let what = "list series in a span";
        let conn = self.conn(what).await?;
        let rows = conn
            .query(
                "SELECT s.id FROM series s WHERE EXISTS (\
                   SELECT 1 FROM readings r \
                   WHERE r.series_id = s.id AND r.ts_ns >= $1 AND r.ts_ns <= $2) \
                 OR EXISTS (\
                   SELECT 1 FROM readings_chunks c \
                   WHERE c.series_id = s.id AND c.ts_max >= $1 AND c.ts_max <= $3 \
                     AND c.ts_min <= $2 \
                     AND EXISTS (SELECT 1 FROM unnest(c.ts_ns) AS t(ts) \
                       WHERE t.ts >= $1 AND t.ts <= $2))",
                &[&lo, &hi, &ts_max_bound(hi)],
            )
            .await
            .map_err(self.query_err(what))?;
        for row in &rows {
            out.ids
                .insert(row.try_get(0).map_err(self.query_err(what))?);
        }
        Ok(out)
    }

    /// The newest point (by device time) of every series passing `sel`, in
    /// one query (per series the newest old row and the last point of the
    /// chunk row with the largest `ts_max`, the newer of the two); series
    /// without readings are left out.
    pub async fn latest(&self, sel: &Selector) -> Result<Vec<(SeriesMeta, Point)>, ReadError> {
        let what = "read latest point";
        let conn = self.conn(what).await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT s.id, s.agent, s.device, s.metric, s.labels, s.unit, r.* \
                     FROM series s CROSS JOIN LATERAL (\
                       (SELECT {POINT_COLUMNS} FROM readings \
                        WHERE series_id = s.id ORDER BY ts_ns DESC LIMIT 1) \
                       UNION ALL \
                       (SELECT c.ts_ns[c.n], c.received_ns[c.n], c.kind[c.n], \
                          c.v_f64[c.n], c.v_i64[c.n], c.v_text[c.n] \
                        FROM (SELECT *, cardinality(ts_ns) AS n FROM readings_chunks \
                          WHERE series_id = s.id ORDER BY ts_max DESC LIMIT 1) c) \
                       ORDER BY 1 DESC LIMIT 1) r \
                     WHERE ($1 = '' OR s.agent = $1) AND ($2 = '' OR s.device = $2) \
                       AND ($3 = '' OR s.metric = $3) \
                     ORDER BY s.id"
                ),
                &[&sel.agent, &sel.device, &sel.metric],
            )
            .await
            .map_err(self.query_err(what))?;
        rows.iter()
            .map(|r| {
                let meta = self.series_meta(r)?;
                let point = self.point(meta.id, r, 6)?;
                Ok((meta, point))
            })
            .collect()
    }

    /// Sends the points of every series passing `sel` within `span` to
    /// `tx`, in chunks of at most `max_chunk` (clamped to
    /// `1..=MAX_CHUNK_POINTS`). Stops quietly when `tx` is closed.
    pub async fn range(
        &self,
        sel: &Selector,
        span: TimeSpan,
        max_chunk: usize,
        tx: &mpsc::Sender<Result<RangeChunk, ReadError>>,
    ) -> Result<(), ReadError> {
        if span.closed().is_none() {
            return Ok(());
        }
        let series = self.series(sel).await?;
        self.range_series(series, span, max_chunk, tx).await
    }

    /// [`range`](Self::range) over the given series, in their order.
    pub async fn range_series(
        &self,
        series: Vec<SeriesMeta>,
        span: TimeSpan,
        max_chunk: usize,
        tx: &mpsc::Sender<Result<RangeChunk, ReadError>>,
    ) -> Result<(), ReadError> {
        let Some((lo, hi)) = span.closed() else {
            return Ok(());
        };
        let limit = max_chunk.clamp(1, MAX_CHUNK_POINTS);
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let what = "read range";
        for meta in series {
            let meta = Arc::new(meta);
            // Pages start at `from` (inclusive). A full page may end in the
            // middle of the points sharing its last timestamp: those are
            // left for the next page, which starts at that timestamp.
            let mut from = lo;
            loop {
                let rows = {
                    let conn = self.conn(what).await?;
                    conn.query(
                        POINTS_IN_WINDOW,
                        &[&meta.id, &from, &hi, &limit_sql, &ts_max_bound(hi)],
                    )
                    .await
                    .map_err(self.query_err(what))?
                };
                let mut points = rows
                    .iter()
                    .map(|r| self.point(meta.id, r, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                let full = points.len() == limit;
                let next = match (full, points.first(), points.last()) {
                    (false, _, _) | (_, None, _) | (_, _, None) => None,
                    (true, Some(first), Some(last)) if first.ts_ns == last.ts_ns => {
                        // A whole page of one timestamp: take all of them.
                        let ts = last.ts_ns;
                        let conn = self.conn(what).await?;
                        let rows = conn
                            .query(
                                POINTS_IN_WINDOW,
                                &[&meta.id, &ts, &ts, &i64::MAX, &ts_max_bound(ts)],
                            )
                            .await
                            .map_err(self.query_err(what))?;
                        points = rows
                            .iter()
                            .map(|r| self.point(meta.id, r, 0))
                            .collect::<Result<Vec<_>, _>>()?;
                        Some(ts.checked_add(1))
                    }
                    (true, _, Some(last)) => {
                        let ts = last.ts_ns;
                        points.retain(|p| p.ts_ns < ts);
                        Some(Some(ts))
                    }
                };
                for chunk in points.chunks(limit) {
                    if tx.send(Ok((meta.clone(), chunk.to_vec()))).await.is_err() {
                        return Ok(());
                    }
                }
                match next {
                    Some(Some(ts)) if ts <= hi => from = ts,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// The series of a row starting with [`SERIES_COLUMNS`].
    fn series_meta(&self, r: &Row) -> Result<SeriesMeta, ReadError> {
        series_row(r)
            .into_meta()
            .map_err(|labels| ReadError::Labels {
                store: self.store.to_string(),
                labels,
            })
    }

    /// Decodes [`POINT_COLUMNS`] starting at column `first`.
    fn point(&self, series: i64, r: &Row, first: usize) -> Result<Point, ReadError> {
        let ts_ns: i64 = r.get(first);
        let received_ns: i64 = r.get(first + 1);
        let kind: i16 = r.get(first + 2);
        let f: Option<f64> = r.get(first + 3);
        let i: Option<i64> = r.get(first + 4);
        let t: Option<String> = r.get(first + 5);
        let bad = |reason: String| ReadError::Reading {
            series,
            ts_ns,
            store: self.store.to_string(),
            reason,
        };
        let value = match (kind, f, i) {
            (0, Some(v), _) => StoredValue::F64(v),
            (1, _, Some(v)) => StoredValue::I64(v),
            (2, _, Some(v)) => StoredValue::Bool(v != 0),
            (6, _, Some(v)) => StoredValue::U64(v as u64),
            (3, _, _) => StoredValue::Str(t.unwrap_or_default()),
            (4, _, _) => StoredValue::Timeout(t.unwrap_or_default()),
            (5, _, _) => StoredValue::Error(t.unwrap_or_default()),
            (0..=2 | 6, _, _) => return Err(bad(format!("kind {kind} without its value"))),
            (other, _, _) => return Err(bad(format!("unknown kind {other}"))),
        };
        Ok(Point {
            ts_ns,
            received_ns,
            value,
        })
    }
}

/// A row starting with [`SERIES_COLUMNS`] (the write side's `load` reads
/// them the same way).
pub(super) fn series_row(r: &Row) -> SeriesRow {
    SeriesRow {
        id: r.get(0),
        agent: r.get(1),
        device: r.get(2),
        metric: r.get(3),
        labels: r.get(4),
        unit: r.get(5),
    }
}
