//! Client subcommands against a running collector's Query service:
//! `agents`, `series`, `latest`, `query` and `tail`, each printing a table,
//! CSV or JSON.
//!
//! Responses are converted to the collector's model at the edge
//! (`query::*_from_proto`), so the formatting below works on `SeriesMeta` and
//! `Point`. Output goes to stdout; a closed pipe (`| head`) ends quietly.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value as Json, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tributary_proto::v1 as pb;
use tributary_proto::v1::query_client::QueryClient;

use crate::model::{Point, SeriesMeta, StoredValue};
use crate::query::{chunk_from_proto, point_from_proto, series_from_proto};

/// Where the collector listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7400";

/// The exact CSV header of readings (`query`, `latest`, `tail`).
pub const READINGS_CSV_HEADER: &str = "agent,device,metric,ts_ns,value,status";

/// Subcommands that talk to a running collector.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// List every agent the collector has seen, with delivery counters
    Agents(AgentsArgs),
    /// List stored series
    Series(FilterArgs),
    /// Show the newest reading of every matching series
    Latest(FilterArgs),
    /// Print stored readings of a device in a time span, in time order
    Query(QueryArgs),
    /// Print readings as they are committed, until Ctrl-C
    Tail(FilterArgs),
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    #[default]
    Table,
    /// Comma-separated values with a header
    Csv,
    /// A JSON array (JSON lines for `tail`)
    Json,
}

/// Options every client subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Collector Query endpoint
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// CA certificate (PEM) that verifies an https:// collector; the system
    /// roots when not given
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for a collector with mutual TLS (an
    /// operator certificate); needs --key
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Series filter; an option left out matches everything.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only series of this agent
    #[arg(long)]
    pub agent: Option<String>,
    /// Only series of this device
    #[arg(long)]
    pub device: Option<String>,
    /// Only series of this metric
    #[arg(long)]
    pub metric: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> pb::SeriesFilter {
        pb::SeriesFilter {
            agent: self.agent.clone().unwrap_or_default(),
            device: self.device.clone().unwrap_or_default(),
            metric: self.metric.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only series of this agent
    #[arg(long)]
    pub agent: Option<String>,
    /// The device whose readings to print
    #[arg(long)]
    pub device: String,
    /// Only this metric
    #[arg(long)]
    pub metric: Option<String>,
    /// Start (inclusive): a duration ago like `5m`, or an RFC 3339 time;
    /// default: the oldest reading
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_when_now)]
    pub since: Option<i64>,
    /// End (exclusive): a duration ago like `1m`, or an RFC 3339 time;
    /// default: now and later
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_when_now)]
    pub until: Option<i64>,
}

/// Runs a client subcommand, printing to stdout.
pub async fn run(cmd: ClientCommand) -> Result<()> {
    let result = match cmd {
        ClientCommand::Agents(a) => agents(a).await,
        ClientCommand::Series(a) => series(a).await,
        ClientCommand::Latest(a) => latest(a).await,
        ClientCommand::Query(a) => query(a).await,
        ClientCommand::Tail(a) => tail(a).await,
    };
    match result {
        // The reader of our output went away (`| head`): not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

async fn connect(conn: &ConnArgs) -> Result<QueryClient<Channel>> {
    let server = &conn.server;
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .with_context(|| format!("invalid server URL {server:?}"))?
        .connect_timeout(Duration::from_secs(5));
    let https = endpoint.uri().scheme_str() == Some("https");
    if https {
        endpoint = endpoint
            .tls_config(client_tls(conn)?)
            .with_context(|| format!("tls setup for {server}"))?;
    } else if conn.ca.is_some() || conn.cert.is_some() {
        bail!("--ca/--cert/--key need an https:// --server (got {server})");
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach collector at {server}"))?;
    Ok(QueryClient::new(channel))
}

/// TLS settings from `--ca`, `--cert` and `--key`.
fn client_tls(conn: &ConnArgs) -> Result<ClientTlsConfig> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &conn.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--ca", ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&conn.cert, &conn.key) {
        tls = tls.identity(Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    Ok(tls)
}

/// A failed call as one line: what, where, the server's message and code.
fn rpc_error(server: &str, what: &str, s: &tonic::Status) -> anyhow::Error {
    let message = if s.message().is_empty() {
        s.code().description()
    } else {
        s.message()
    };
    anyhow!("{what} from {server}: {message} ({:?})", s.code())
}

fn write_err(e: io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("write to stdout")
}

async fn agents(args: AgentsArgs) -> Result<()> {
    let server = &args.conn.server;
    let agents = connect(&args.conn)
        .await?
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(|s| rpc_error(server, "list agents", &s))?
        .into_inner()
        .agents;
    let mut out = io::stdout().lock();
    write_agents(&mut out, args.conn.format, &agents).map_err(write_err)
}

async fn series(args: FilterArgs) -> Result<()> {
    let server = &args.conn.server;
    let series: Vec<SeriesMeta> = connect(&args.conn)
        .await?
        .list_series(args.filter())
        .await
        .map_err(|s| rpc_error(server, "list series", &s))?
        .into_inner()
        .series
        .into_iter()
        .map(series_from_proto)
        .collect();
    let mut out = io::stdout().lock();
    write_series(&mut out, args.conn.format, &series).map_err(write_err)
}

async fn latest(args: FilterArgs) -> Result<()> {
    let server = &args.conn.server;
    let resp = connect(&args.conn)
        .await?
        .latest(args.filter())
        .await
        .map_err(|s| rpc_error(server, "latest", &s))?
        .into_inner();
    let mut readings = Vec::with_capacity(resp.readings.len());
    for sp in resp.readings {
        let (Some(series), Some(point)) = (sp.series, sp.point) else {
            bail!("latest from {server}: reading without its series or point");
        };
        let point = point_from_proto(point).with_context(|| format!("latest from {server}"))?;
        readings.push((Arc::new(series_from_proto(series)), point));
    }
    let mut out = io::stdout().lock();
    write_readings(&mut out, args.conn.format, &readings).map_err(write_err)
}

async fn query(args: QueryArgs) -> Result<()> {
    if let (Some(since), Some(until)) = (args.since, args.until)
        && until < since
    {
        bail!(
            "--until ({}) is before --since ({})",
            rfc3339(until),
            rfc3339(since)
        );
    }
    let server = &args.conn.server;
    let req = pb::RangeRequest {
        filter: Some(pb::SeriesFilter {
            agent: args.agent.clone().unwrap_or_default(),
            device: args.device.clone(),
            metric: args.metric.clone().unwrap_or_default(),
        }),
        since_ns: args.since.unwrap_or(0),
        until_ns: args.until.unwrap_or(0),
    };
    let mut stream = connect(&args.conn)
        .await?
        .range(req)
        .await
        .map_err(|s| rpc_error(server, "query", &s))?
        .into_inner();
    let mut readings = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| rpc_error(server, "query", &s))?
    {
        let (series, points) =
            chunk_from_proto(chunk).with_context(|| format!("query from {server}"))?;
        let series = Arc::new(series);
        readings.extend(points.into_iter().map(|p| (Arc::clone(&series), p)));
    }
    // The server sends series by series; print in time order across all of
    // them. The sort is stable, so ties keep the server's (series) order.
    readings.sort_by_key(|(_, p)| p.ts_ns);
    let mut out = io::stdout().lock();
    write_readings(&mut out, args.conn.format, &readings).map_err(write_err)
}

async fn tail(args: FilterArgs) -> Result<()> {
    let server = &args.conn.server;
    let mut stream = connect(&args.conn)
        .await?
        .tail(args.filter())
        .await
        .map_err(|s| rpc_error(server, "tail", &s))?
        .into_inner();
    let format = args.conn.format;
    if format == Format::Csv {
        let mut out = io::stdout().lock();
        writeln!(out, "{READINGS_CSV_HEADER}")
            .and_then(|()| out.flush())
            .map_err(write_err)?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let chunk = tokio::select! {
            r = &mut ctrl_c => {
                r.context("listen for ctrl-c")?;
                return Ok(());
            }
            m = stream.message() => match m.map_err(|s| rpc_error(server, "tail", &s))? {
                Some(chunk) => chunk,
                None => return Ok(()),
            },
        };
        let (series, points) =
            chunk_from_proto(chunk).with_context(|| format!("tail from {server}"))?;
        let mut out = io::stdout().lock();
        write_tail_chunk(&mut out, format, &series, &points)
            .and_then(|()| out.flush())
            .map_err(write_err)?;
    }
}

// ------------------------------------------------------------ formatting

/// Writes agents in `format`.
pub fn write_agents(
    out: &mut impl Write,
    format: Format,
    agents: &[pb::AgentInfo],
) -> io::Result<()> {
    let last_seen = |a: &pb::AgentInfo| {
        if a.last_seen_ns == 0 {
            String::new()
        } else {
            rfc3339(a.last_seen_ns)
        }
    };
    match format {
        Format::Json => {
            let rows: Vec<Json> = agents
                .iter()
                .map(|a| {
                    json!({
                        "id": a.id,
                        "connected": a.connected,
                        "peer": a.peer,
                        "last_seen_ns": a.last_seen_ns,
                        "last_seen": last_seen(a),
                        "epoch": format!("{:016x}", a.epoch),
                        "committed_seq": a.committed_seq,
                        "lag": a.lag,
                        "readings_stored": a.readings_stored,
                        "batches_deduplicated": a.batches_deduplicated,
                        "batches_resent": a.batches_resent,
                        "dropped_at_agent": a.dropped_at_agent,
                    })
                })
                .collect();
            write_json_array(out, &rows)
        }
        Format::Csv | Format::Table => {
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.connected.to_string(),
                        a.peer.clone(),
                        last_seen(a),
                        format!("{:016x}", a.epoch),
                        a.committed_seq.to_string(),
                        a.lag.to_string(),
                        a.readings_stored.to_string(),
                        a.batches_deduplicated.to_string(),
                        a.batches_resent.to_string(),
                        a.dropped_at_agent.to_string(),
                    ]
                })
                .collect();
            if format == Format::Csv {
                let header = "id,connected,peer,last_seen,epoch,committed_seq,lag,\
                              readings_stored,batches_deduplicated,batches_resent,dropped_at_agent";
                write_csv(out, header, &rows)
            } else {
                let header = [
                    "ID",
                    "CONNECTED",
                    "PEER",
                    "LAST SEEN",
                    "EPOCH",
                    "COMMITTED SEQ",
                    "LAG",
                    "READINGS STORED",
                    "DEDUPLICATED",
                    "RESENT",
                    "DROPPED AT AGENT",
                ];
                write_table(out, &header, &rows)
            }
        }
    }
}

/// Writes series in `format`.
pub fn write_series(out: &mut impl Write, format: Format, series: &[SeriesMeta]) -> io::Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<Json> = series
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "agent": s.key.agent,
                        "device": s.key.device,
                        "metric": s.key.metric,
                        "labels": s.key.labels,
                        "unit": s.key.unit,
                    })
                })
                .collect();
            write_json_array(out, &rows)
        }
        Format::Csv | Format::Table => {
            let rows: Vec<Vec<String>> = series
                .iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        s.key.agent.clone(),
                        s.key.device.clone(),
                        s.key.metric.clone(),
                        labels_text(s),
                        s.key.unit.clone(),
                    ]
                })
                .collect();
            if format == Format::Csv {
                write_csv(out, "id,agent,device,metric,labels,unit", &rows)
            } else {
                let header = ["ID", "AGENT", "DEVICE", "METRIC", "LABELS", "UNIT"];
                write_table(out, &header, &rows)
            }
        }
    }
}

/// Writes readings in `format`, in the order given.
pub fn write_readings(
    out: &mut impl Write,
    format: Format,
    readings: &[(Arc<SeriesMeta>, Point)],
) -> io::Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<Json> = readings.iter().map(|(s, p)| reading_json(s, p)).collect();
            write_json_array(out, &rows)
        }
        Format::Csv => {
            let rows: Vec<Vec<String>> = readings.iter().map(|(s, p)| reading_csv(s, p)).collect();
            write_csv(out, READINGS_CSV_HEADER, &rows)
        }
        Format::Table => {
            let rows: Vec<Vec<String>> =
                readings.iter().map(|(s, p)| reading_table(s, p)).collect();
            write_table(out, &READINGS_TABLE_HEADER, &rows)
        }
    }
}

const READINGS_TABLE_HEADER: [&str; 7] = [
    "TIME", "AGENT", "DEVICE", "METRIC", "LABELS", "VALUE", "STATUS",
];

/// Writes one streamed chunk: table lines without a header (widths are not
/// known in advance), CSV rows (the header is written once by the caller),
/// or JSON lines.
pub fn write_tail_chunk(
    out: &mut impl Write,
    format: Format,
    series: &SeriesMeta,
    points: &[Point],
) -> io::Result<()> {
    for p in points {
        match format {
            Format::Json => {
                serde_json::to_writer(&mut *out, &reading_json(series, p))?;
                writeln!(out)?;
            }
            Format::Csv => write_csv_row(out, &reading_csv(series, p))?,
            Format::Table => writeln!(out, "{}", reading_table(series, p).join("  "))?,
        }
    }
    Ok(())
}

/// `(value, status, failure message)` of a stored value; the value is empty
/// when the poll failed.
fn value_parts(v: &StoredValue) -> (String, &'static str, Option<&str>) {
    match v {
        StoredValue::F64(x) => (x.to_string(), "ok", None),
        StoredValue::I64(x) => (x.to_string(), "ok", None),
        StoredValue::Bool(x) => (x.to_string(), "ok", None),
        StoredValue::Str(x) => (x.clone(), "ok", None),
        StoredValue::Timeout(m) => (String::new(), "timeout", Some(m)),
        StoredValue::Error(m) => (String::new(), "error", Some(m)),
    }
}

fn reading_csv(s: &SeriesMeta, p: &Point) -> Vec<String> {
    let (value, status, _) = value_parts(&p.value);
    vec![
        s.key.agent.clone(),
        s.key.device.clone(),
        s.key.metric.clone(),
        p.ts_ns.to_string(),
        value,
        status.to_string(),
    ]
}

fn reading_table(s: &SeriesMeta, p: &Point) -> Vec<String> {
    let (mut value, status, message) = value_parts(&p.value);
    if !value.is_empty() && !s.key.unit.is_empty() {
        value = format!("{value} {}", s.key.unit);
    }
    let status = match message {
        Some(m) if !m.is_empty() => format!("{status}: {m}"),
        _ => status.to_string(),
    };
    vec![
        rfc3339(p.ts_ns),
        s.key.agent.clone(),
        s.key.device.clone(),
        s.key.metric.clone(),
        labels_text(s),
        value,
        status,
    ]
}

fn reading_json(s: &SeriesMeta, p: &Point) -> Json {
    let (_, status, message) = value_parts(&p.value);
    let value = match &p.value {
        // NaN and infinities have no JSON form and become null.
        StoredValue::F64(x) => json!(x),
        StoredValue::I64(x) => json!(x),
        StoredValue::Bool(x) => json!(x),
        StoredValue::Str(x) => json!(x),
        StoredValue::Timeout(_) | StoredValue::Error(_) => Json::Null,
    };
    let mut obj = json!({
        "agent": s.key.agent,
        "device": s.key.device,
        "metric": s.key.metric,
        "labels": s.key.labels,
        "unit": s.key.unit,
        "ts_ns": p.ts_ns,
        "time": rfc3339_nanos(p.ts_ns),
        "received_ns": p.received_ns,
        "value": value,
        "status": status,
    });
    if let (Some(m), Some(map)) = (message, obj.as_object_mut()) {
        map.insert("message".into(), json!(m));
    }
    obj
}

/// Labels as `{k="v",...}`, values escaped as in the Prometheus text format.
pub fn labels_text(s: &SeriesMeta) -> String {
    let body: Vec<String> = s
        .key
        .labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Device time as RFC 3339 with milliseconds (nanoseconds in JSON); times
/// before 1970 stay raw nanoseconds.
fn rfc3339(ns: i64) -> String {
    match u64::try_from(ns) {
        Ok(n) => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(n)).to_string(),
        Err(_) => ns.to_string(),
    }
}

fn rfc3339_nanos(ns: i64) -> String {
    match u64::try_from(ns) {
        Ok(n) => humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(n)).to_string(),
        Err(_) => ns.to_string(),
    }
}

/// A CSV field, quoted (RFC 4180) when it holds a comma, quote or line break.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

fn write_csv_row(out: &mut impl Write, row: &[String]) -> io::Result<()> {
    let fields: Vec<Cow<'_, str>> = row.iter().map(|f| csv_field(f)).collect();
    writeln!(out, "{}", fields.join(","))
}

fn write_csv(out: &mut impl Write, header: &str, rows: &[Vec<String>]) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    writeln!(out, "{header}")?;
    for row in rows {
        write_csv_row(&mut out, row)?;
    }
    out.flush()
}

fn write_json_array(out: &mut impl Write, rows: &[Json]) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut out, rows)?;
    writeln!(out)?;
    out.flush()
}

/// A table cell on one line: control characters are escaped.
fn cell(s: &str) -> Cow<'_, str> {
    if s.contains(char::is_control) {
        Cow::Owned(s.escape_debug().to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn write_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = io::BufWriter::new(out);
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(c);
            if i + 1 < widths.len() {
                text.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut header.iter().copied())?;
    for row in &rows {
        line(&mut row.iter().map(|c| c.as_ref()))?;
    }
    out.flush()
}

// ------------------------------------------------------------ time arguments

/// `--since`/`--until` relative to the wall clock now.
fn parse_when_now(s: &str) -> Result<i64, String> {
    parse_when(s, SystemTime::now())
}

/// A duration (`5m`, `2h 30m`: that long before `now`) or an RFC 3339 time
/// (`2024-05-01T12:00:00Z`, also without the `T` or the zone, read as UTC),
/// as ns since the Unix epoch.
pub fn parse_when(s: &str, now: SystemTime) -> Result<i64, String> {
    let s = s.trim();
    let t = if let Ok(ago) = humantime::parse_duration(s) {
        now.checked_sub(ago)
            .ok_or_else(|| format!("{s:?} ago is too far back"))?
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|e| {
            format!(
                "invalid time {s:?} ({e}): expected a duration ago like 5m or an RFC 3339 \
                 time like 2024-05-01T12:00:00Z"
            )
        })?
    };
    let ns = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).ok(),
        Err(before) => i64::try_from(before.duration().as_nanos()).ok().map(|n| -n),
    };
    ns.ok_or_else(|| format!("time {s:?} is out of range"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::SeriesKey;

    fn meta(metric: &str, labels: &[(&str, &str)]) -> Arc<SeriesMeta> {
        Arc::new(SeriesMeta {
            id: 1,
            key: SeriesKey {
                agent: "edge-1".into(),
                device: "pump,1".into(),
                metric: metric.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                unit: "C".into(),
            },
        })
    }

    fn point(ts_ns: i64, value: StoredValue) -> Point {
        Point {
            ts_ns,
            received_ns: ts_ns + 1,
            value,
        }
    }

    fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field(""), "");
    }

    #[test]
    fn readings_csv_has_the_exact_header_and_empty_value_on_failure() {
        let m = meta("temp", &[]);
        let readings = vec![
            (Arc::clone(&m), point(1, StoredValue::F64(21.5))),
            (
                Arc::clone(&m),
                point(2, StoredValue::Timeout("no answer".into())),
            ),
            (
                Arc::clone(&m),
                point(3, StoredValue::Error("refused".into())),
            ),
            (
                Arc::clone(&m),
                point(4, StoredValue::Str("on, \"auto\"".into())),
            ),
            (Arc::clone(&m), point(5, StoredValue::Bool(true))),
            (m, point(6, StoredValue::I64(-3))),
        ];
        let text = render(|out| write_readings(out, Format::Csv, &readings));
        assert_eq!(
            text,
            "agent,device,metric,ts_ns,value,status\n\
             edge-1,\"pump,1\",temp,1,21.5,ok\n\
             edge-1,\"pump,1\",temp,2,,timeout\n\
             edge-1,\"pump,1\",temp,3,,error\n\
             edge-1,\"pump,1\",temp,4,\"on, \"\"auto\"\"\",ok\n\
             edge-1,\"pump,1\",temp,5,true,ok\n\
             edge-1,\"pump,1\",temp,6,-3,ok\n"
        );
    }

    #[test]
    fn table_aligns_and_shows_labels_and_failures() {
        let readings = vec![
            (
                meta("t", &[("room", "a\"1"), ("z", "x")]),
                point(0, StoredValue::F64(1.0)),
            ),
            (
                meta("longer", &[]),
                point(1_000_000, StoredValue::Error("boom".into())),
            ),
        ];
        let text = render(|out| write_readings(out, Format::Table, &readings));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME "));
        assert!(lines[1].contains(r#"{room="a\"1",z="x"}"#), "{text}");
        assert!(lines[1].contains("1970-01-01T00:00:00.000Z"), "{text}");
        assert!(lines[2].ends_with("error: boom"), "{text}");
        // Columns line up: LABELS starts at the same offset on every line.
        let col = lines[0].find("LABELS").unwrap();
        assert_eq!(lines[1].find('{').unwrap(), col);
        assert_eq!(lines[2].find('{').unwrap(), col);
    }

    #[test]
    fn json_readings_carry_failure_messages() {
        let readings = vec![(
            meta("t", &[]),
            point(5, StoredValue::Timeout("slow".into())),
        )];
        let text = render(|out| write_readings(out, Format::Json, &readings));
        let v: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0]["status"], "timeout");
        assert_eq!(v[0]["message"], "slow");
        assert!(v[0]["value"].is_null());
        assert_eq!(v[0]["ts_ns"], 5);
    }

    #[test]
    fn since_accepts_durations_ago_and_rfc3339() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_when("5m", now).unwrap(),
            (1_000_000 - 300) * 1_000_000_000
        );
        assert_eq!(
            parse_when("1h 30m", now).unwrap(),
            (1_000_000 - 5400) * 1_000_000_000
        );
        assert_eq!(
            parse_when("2024-05-01T12:00:00Z", now).unwrap(),
            1_714_564_800 * 1_000_000_000
        );
        assert_eq!(
            parse_when("2024-05-01 12:00:00", now).unwrap(),
            1_714_564_800 * 1_000_000_000
        );
        assert_eq!(
            parse_when("2024-05-01T12:00:00.5Z", now).unwrap(),
            1_714_564_800 * 1_000_000_000 + 500_000_000
        );
        let err = parse_when("yesterday", now).unwrap_err();
        assert!(err.contains("yesterday") && err.contains("5m"), "{err}");
        assert!(parse_when("", now).is_err());
    }

    #[test]
    fn agents_csv_and_table() {
        let agents = vec![pb::AgentInfo {
            id: "edge-1".into(),
            connected: true,
            peer: "10.0.0.5:4411".into(),
            last_seen_ns: 0,
            epoch: 0xab,
            committed_seq: 7,
            readings_stored: 70,
            batches_deduplicated: 1,
            dropped_at_agent: 2,
            batches_resent: 3,
            lag: 4,
        }];
        let csv = render(|out| write_agents(out, Format::Csv, &agents));
        assert_eq!(
            csv,
            "id,connected,peer,last_seen,epoch,committed_seq,lag,readings_stored,\
             batches_deduplicated,batches_resent,dropped_at_agent\n\
             edge-1,true,10.0.0.5:4411,,00000000000000ab,7,4,70,1,3,2\n"
        );
        let table = render(|out| write_agents(out, Format::Table, &agents));
        assert!(table.starts_with("ID "), "{table}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::{CommandFactory, Parser};
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: ClientCommand,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "x", "query", "--device", "d", "--since", "5m", "--format", "csv",
        ])
        .unwrap();
        match cli.cmd {
            ClientCommand::Query(q) => {
                assert_eq!(q.conn.server, DEFAULT_SERVER);
                assert_eq!(q.conn.format, Format::Csv);
                assert!(q.since.is_some() && q.until.is_none());
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["x", "query"]).is_err(),
            "--device is required"
        );
    }

    #[tokio::test]
    async fn tls_flags_need_an_https_server() {
        let conn = ConnArgs {
            server: "http://127.0.0.1:1".into(),
            format: Format::Table,
            ca: Some(PathBuf::from("ca.pem")),
            cert: None,
            key: None,
        };
        let err = format!("{:#}", connect(&conn).await.unwrap_err());
        assert_eq!(
            err,
            "--ca/--cert/--key need an https:// --server (got http://127.0.0.1:1)"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_one_line_error_naming_the_url() {
        // Port 1 on localhost: nothing listens there.
        let conn = ConnArgs {
            server: "http://127.0.0.1:1".into(),
            format: Format::Table,
            ca: None,
            cert: None,
            key: None,
        };
        let err = connect(&conn).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("http://127.0.0.1:1"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
