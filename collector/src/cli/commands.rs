//! Each client subcommand: connect to the collector (plain or TLS, with
//! `--ca`, `--cert` and `--key`), make the call, and hand what comes back
//! to the renderers. Errors are one line naming the server.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tributary_proto::v1 as pb;
use tributary_proto::v1::query_client::QueryClient;

use super::render::{rfc3339, write_agents, write_readings, write_series, write_tail_chunk};
use super::{
    AgentsArgs, ClientCommand, ConnArgs, FilterArgs, Format, QueryArgs, READINGS_CSV_HEADER,
};
use crate::model::SeriesMeta;
use crate::query::{chunk_from_proto, point_from_proto, series_from_proto};

/// Runs a client subcommand, printing to stdout.
pub(super) async fn run(cmd: ClientCommand) -> Result<()> {
    let result = match cmd {
        ClientCommand::Agents(a) => agents(a).await,
        ClientCommand::Series(a) => series(a).await,
        ClientCommand::Latest(a) => latest(a).await,
        ClientCommand::Query(a) => query(a).await,
        ClientCommand::Tail(a) => tail(a).await,
        ClientCommand::Exports(a) => super::exports::run(a).await,
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

pub(super) async fn connect(conn: &ConnArgs) -> Result<QueryClient<Channel>> {
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
pub(super) fn rpc_error(server: &str, what: &str, s: &tonic::Status) -> anyhow::Error {
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

/// Every page of `ListSeries`, following the tokens until the last page.
async fn series(args: FilterArgs) -> Result<()> {
    let server = &args.conn.server;
    let mut client = connect(&args.conn).await?;
    let filter = args.filter();
    let mut request = pb::ListSeriesRequest {
        agent: filter.agent,
        device: filter.device,
        metric: filter.metric,
        ..Default::default()
    };
    let mut series: Vec<SeriesMeta> = Vec::new();
    loop {
        let page = client
            .list_series(request.clone())
            .await
            .map_err(|s| rpc_error(server, "list series", &s))?
            .into_inner();
        series.extend(page.series.into_iter().map(series_from_proto));
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == request.page_token {
            bail!(
                "list series from {server}: the server repeats page token {:?}",
                request.page_token
            );
        }
        request.page_token = page.next_page_token;
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
