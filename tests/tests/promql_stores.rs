//! The Prometheus API over both stores and through store outages, with
//! real collector processes:
//!
//! - a PostgreSQL-backed collector answers a slice of the PromQL corpus
//!   exactly as an SQLite-backed one holding the same data (the SQLite
//!   answers are held to Prometheus by `promql_differential.rs`);
//! - a store that fails under a query (the SQLite file moved away; the
//!   PostgreSQL `readings` table renamed) gives 503 `unavailable`, and the
//!   same collector answers again once the store is back;
//! - `start`/`end` of the series, labels, label values and metadata calls
//!   keep to the series with readings in that range; times in RFC 3339
//!   with an offset; huge `offset`/`@`/ranges are refused, never wrapped.

mod postgres_support;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use postgres_support::{TestSchema, psql};
use tributary_tests::cluster::{Collector, PATIENCE};
use tributary_tests::process::{Proc, TestDir, free_addr, wait_for_port};
use tributary_tests::promql_data::{self, T0};

/// Asks `endpoint` with `params`; the status and the JSON answer.
async fn ask(
    client: &reqwest::Client,
    base: &str,
    endpoint: &str,
    params: &[(&str, String)],
) -> Result<(u16, Value)> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/{endpoint}"), params)?;
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("ask {base}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let json = serde_json::from_str(&text).with_context(|| format!("{base}: not JSON: {text}"))?;
    Ok((status, json))
}

fn q(query: &str, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v = vec![("query", query.to_owned())];
    v.extend(extra.iter().cloned());
    v
}

/// The answer's `data` with vector and matrix results in label order.
fn sorted(answer: &Value) -> Value {
    let mut data = answer["data"].clone();
    if let Some(result) = data["result"].as_array_mut() {
        result.sort_by_key(|s| s["metric"].to_string());
    }
    data
}

/// Every `n`th query of the corpus compared in full (no `!422` or
/// `!instant` lines).
fn corpus_slice(n: usize) -> Result<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("promql/corpus.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .step_by(n)
        .map(str::to_owned)
        .collect())
}

/// `tributary-collector serve` on `store`, with its HTTP listener; the
/// process and the HTTP base URL.
async fn collector_on(dir: &TestDir, store: &str) -> Result<(Proc, String, String)> {
    let (addr, http) = (free_addr()?, free_addr()?);
    let proc = Proc::builder("tributary-collector")?
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--http-listen", &http.to_string()])
        .arg(format!("--store={store}"))
        .log_to(dir.join("collector.log"))
        .spawn()?;
    wait_for_port(addr, PATIENCE).await?;
    wait_for_port(http, PATIENCE).await?;
    Ok((proc, format!("http://{addr}"), format!("http://{http}")))
}

/// Asks `query` until the store is reachable: 200.
async fn answers(client: &reqwest::Client, base: &str, query: &str) -> Result<Value> {
    let t = vec![("time", (T0 + 1800).to_string())];
    let (status, body) = ask(client, base, "query", &q(query, &t)).await?;
    ensure!(status == 200, "{query}: {status} {body}");
    Ok(body)
}

/// A query while the store is gone: 503 `unavailable`, naming the store.
async fn refused_503(client: &reqwest::Client, base: &str) -> Result<()> {
    let t = vec![("time", (T0 + 1800).to_string())];
    for query in ["sum by (device) (rate(tr_requests_total[5m]))", "tr_up"] {
        let (status, body) = ask(client, base, "query", &q(query, &t)).await?;
        ensure!(
            status == 503 && body["errorType"] == "unavailable" && body["status"] == "error",
            "{query} with the store gone: expected 503 unavailable, got {status} {body}"
        );
        ensure!(
            body["error"].as_str().is_some_and(|e| e.contains("store")),
            "the error names the store: {body}"
        );
    }
    // With a time range, the series call reads the readings too.
    let range = [
        ("match[]", "tr_up".to_owned()),
        ("start", T0.to_string()),
        ("end", (T0 + 600).to_string()),
    ];
    let (status, body) = ask(client, base, "series", &range).await?;
    ensure!(
        status == 503 && body["errorType"] == "unavailable",
        "series with the store gone: {status} {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_as_sqlite_and_outages_give_503() -> Result<()> {
    let data = promql_data::generate();
    let client = reqwest::Client::new();

    let dir = TestDir::new("promql-stores-sqlite")?;
    let sqlite = Collector::start(&dir, free_addr()?).await?;
    promql_data::ingest(&sqlite.url(), &data).await?;
    let sqlite_http = sqlite.http_url();

    let schema = TestSchema::new("promql_stores").await?;
    let pg_dir = TestDir::new("promql-stores-pg")?;
    let (_pg, pg_grpc, pg_http) = collector_on(&pg_dir, &schema.url()).await?;
    promql_data::ingest(&pg_grpc, &data).await?;

    // A slice of the corpus, instant and range, the same on both stores.
    let mut compared = 0usize;
    let mut disagree = Vec::new();
    for query in corpus_slice(4)? {
        for (endpoint, params) in [
            ("query", vec![("time", (T0 + 3607).to_string())]),
            (
                "query_range",
                vec![
                    ("start", (T0 + 600).to_string()),
                    ("end", (T0 + 7500).to_string()),
                    ("step", "60".to_owned()),
                ],
            ),
        ] {
            let params = q(&query, &params);
            let (ss, s) = ask(&client, &sqlite_http, endpoint, &params).await?;
            let (ps, p) = ask(&client, &pg_http, endpoint, &params).await?;
            compared += 1;
            // The same answer: the same values, or the same error (the
            // corpus has queries Prometheus refuses as it evaluates them).
            let same = match (ss, ps) {
                (200, 200) => sorted(&s) == sorted(&p),
                _ => ss == ps && s == p,
            };
            if !same {
                disagree.push(format!(
                    "{query} ({endpoint}):\n  sqlite {ss}: {s}\n  postgres {ps}: {p}"
                ));
            }
        }
    }
    for d in &disagree {
        println!("DISAGREE {d}\n");
    }
    ensure!(
        disagree.is_empty() && compared >= 60,
        "{} of {compared} answers differ between SQLite and PostgreSQL",
        disagree.len()
    );

    // PromQL's pool names its connections (README "Grafana and PromQL").
    let named = psql(
        &schema.url(),
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tributary-collector promql'",
    )
    .await?;
    ensure!(
        named.trim().parse::<u64>().is_ok_and(|n| n >= 1),
        "no connection named tributary-collector promql after PromQL queries: {named:?}"
    );

    // PostgreSQL: the readings_chunks table disappears under the collector.
    answers(&client, &pg_http, "tr_up").await?;
    psql(
        &schema.url(),
        "ALTER TABLE readings_chunks RENAME TO readings_away",
    )
    .await?;
    let outage = refused_503(&client, &pg_http).await;
    psql(
        &schema.url(),
        "ALTER TABLE readings_away RENAME TO readings_chunks",
    )
    .await?;
    outage?;
    let back = answers(&client, &pg_http, "count(tr_up)").await?;
    ensure!(
        back["data"]["result"][0]["value"][1] == "20",
        "after the outage, PostgreSQL answers again: {back}"
    );

    // SQLite: the database file moves away and comes back.
    let db = dir.join("collector.db");
    let away = dir.join("collector.db.away");
    answers(&client, &sqlite_http, "tr_up").await?;
    std::fs::rename(&db, &away)?;
    let outage = refused_503(&client, &sqlite_http).await;
    std::fs::rename(&away, &db)?;
    outage?;
    let back = answers(&client, &sqlite_http, "count(tr_up)").await?;
    ensure!(
        back["data"]["result"][0]["value"][1] == "20",
        "after the outage, SQLite answers again: {back}"
    );

    time_ranges_and_times(&client, &sqlite_http).await?;
    time_ranges_and_times(&client, &pg_http).await?;
    Ok(())
}

/// `start`/`end` on the series calls, RFC 3339 offsets, huge modifiers.
async fn time_ranges_and_times(client: &reqwest::Client, base: &str) -> Result<()> {
    let inside = [
        ("start", (T0 + 600).to_string()),
        ("end", (T0 + 1200).to_string()),
    ];
    // Years after the data: nothing.
    let after = [
        ("start", (T0 + 86_400 * 365).to_string()),
        ("end", (T0 + 86_400 * 366).to_string()),
    ];
    let with = |m: &str, span: &[(&'static str, String)]| {
        let mut v = vec![("match[]", m.to_owned())];
        v.extend(span.iter().cloned());
        v
    };
    let count = |v: &Value| v["data"].as_array().map_or(0, Vec::len);
    let (s, inside_series) = ask(client, base, "series", &with("tr_up", &inside)).await?;
    ensure!(
        s == 200 && count(&inside_series) == 20,
        "{base}: series inside: {inside_series}"
    );
    let (s, none) = ask(client, base, "series", &with("tr_up", &after)).await?;
    ensure!(
        s == 200 && count(&none) == 0,
        "{base}: series after the data: {none}"
    );
    let (s, names) = ask(client, base, "labels", &after).await?;
    ensure!(
        s == 200 && count(&names) == 0,
        "{base}: labels after the data: {names}"
    );
    let (s, names) = ask(client, base, "labels", &inside).await?;
    ensure!(
        s == 200
            && names["data"]
                .as_array()
                .is_some_and(|a| a.contains(&"device".into())),
        "{base}: labels inside: {names}"
    );
    let (s, values) = ask(client, base, "label/device/values", &after).await?;
    ensure!(
        s == 200 && count(&values) == 0,
        "{base}: values after: {values}"
    );
    let (s, values) = ask(client, base, "label/device/values", &inside).await?;
    ensure!(
        s == 200 && count(&values) == 10,
        "{base}: values inside: {values}"
    );
    let (s, meta) = ask(client, base, "metadata", &after).await?;
    ensure!(
        s == 200
            && meta["data"]
                .as_object()
                .is_some_and(serde_json::Map::is_empty),
        "{base}: metadata after: {meta}"
    );
    let (s, meta) = ask(client, base, "metadata", &inside).await?;
    ensure!(
        s == 200 && meta["data"].get("tr_up").is_some(),
        "{base}: metadata inside: {meta}"
    );
    // A range that ends before it starts.
    let (s, bad) = ask(
        client,
        base,
        "series",
        &with("tr_up", &[("start", "2000".into()), ("end", "1000".into())]),
    )
    .await?;
    ensure!(
        s == 400 && bad["errorType"] == "bad_data",
        "{base}: end < start: {bad}"
    );

    // T0 + 1800 is 2023-11-14T22:43:20Z, that is 2023-11-15T00:43:20+02:00
    // and 2023-11-14T17:43:20-05:00.
    let by_seconds = answers(client, base, "sum(tr_temp_celsius)").await?;
    for time in ["2023-11-15T00:43:20+02:00", "2023-11-14T17:43:20-05:00"] {
        let (s, by_rfc) = ask(
            client,
            base,
            "query",
            &q("sum(tr_temp_celsius)", &[("time", time.to_owned())]),
        )
        .await?;
        ensure!(
            s == 200 && by_rfc["data"] == by_seconds["data"],
            "{base}: time={time}: {by_rfc} vs {by_seconds}"
        );
    }
    let (s, range) = ask(
        client,
        base,
        "query_range",
        &q(
            "count(tr_up)",
            &[
                ("start", "2023-11-15T00:43:20+02:00".to_owned()),
                ("end", "2023-11-14T22:53:20Z".to_owned()),
                ("step", "60".to_owned()),
            ],
        ),
    )
    .await?;
    ensure!(
        s == 200
            && range["data"]["result"][0]["values"]
                .as_array()
                .map(Vec::len)
                == Some(11),
        "{base}: a range in RFC 3339 with offsets: {range}"
    );

    // Huge modifiers: refused, naming them; the collector stays up.
    let t = vec![("time", (T0 + 1800).to_string())];
    for (query, names) in [
        ("tr_up offset 100000000y", "offset"),
        ("tr_up offset -100000000y", "offset"),
        ("rate(tr_up[100000000y])", "range"),
        ("max_over_time(tr_up[100000000y:1m])", "subquery range"),
        ("tr_up @ 9000000000000000", "@"),
        ("tr_up @ -9000000000000000", "@"),
    ] {
        let (s, body) = ask(client, base, "query", &q(query, &t)).await?;
        let error = body["error"].as_str().unwrap_or("");
        ensure!(
            (s == 422 || s == 400) && body["status"] == "error" && error.contains(names),
            "{base}: {query}: expected 400 or 422 naming {names:?}, got {s} {body}"
        );
    }
    answers(client, base, "tr_up").await?;
    Ok(())
}
