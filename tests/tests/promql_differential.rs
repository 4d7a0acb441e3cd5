//! PromQL against Prometheus itself: the same data set
//! (`tributary_tests::promql_data`) loaded into Prometheus 2.42 (through
//! `promtool tsdb create-blocks-from openmetrics`) and into a collector
//! (through Ingest), then every query of `tests/promql/corpus.txt` asked
//! of both HTTP APIs, as instant queries at several times and as range
//! queries with several steps, and the answers compared: the same result
//! type, label sets and timestamps, values within 1e-9 relative (NaN
//! equal to NaN). A disagreement prints both answers. Corpus lines marked
//! `!422` must be refused by the collector with 422; lines marked
//! `!instant` are compared as instant queries only.
//!
//! Also answers with awkward strings byte for byte (JSON escapes and key
//! order), `promtool query instant|range|series|labels` against the
//! collector, and the API's status codes for bad and unsupported queries.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use tributary_tests::cluster::{Collector, PATIENCE};
use tributary_tests::process::{TestDir, eventually, free_addr};
use tributary_tests::promql_data::{self, T0};

/// A Debian tool: the path from `env`, else `default`, installed with
/// apt-get when missing and we are root.
fn tool(env: &str, default: &str, package: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let path = PathBuf::from(default);
    if path.is_file() {
        return Ok(path);
    }
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get")?;
    ensure!(
        status.success() && path.is_file(),
        "{default} is missing: install the Debian package {package} (or set {env})"
    );
    Ok(path)
}

/// A query of the corpus.
struct Case {
    query: String,
    expect_422: bool,
    /// Compared as instant queries only (`!instant`).
    instant_only: bool,
}

fn corpus() -> Result<Vec<Case>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("promql/corpus.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            if let Some(q) = l.strip_prefix("!422 ") {
                Case {
                    query: q.trim().to_owned(),
                    expect_422: true,
                    instant_only: false,
                }
            } else if let Some(q) = l.strip_prefix("!instant ") {
                Case {
                    query: q.trim().to_owned(),
                    expect_422: false,
                    instant_only: true,
                }
            } else {
                Case {
                    query: l.to_owned(),
                    expect_422: false,
                    instant_only: false,
                }
            }
        })
        .collect())
}

/// One way of asking a query: its endpoint and parameters.
fn evaluations() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let mut out = Vec::new();
    for t in ["1800", "3607.123", "7000", "7400"] {
        let t: f64 = t.parse().unwrap_or(0.0);
        out.push(("query", vec![("time", format!("{}", T0 as f64 + t))]));
    }
    for (start, end, step) in [(600, 7500, "60"), (0, 7200, "5m"), (1000, 4000, "37")] {
        out.push((
            "query_range",
            vec![
                ("start", (T0 + start).to_string()),
                ("end", (T0 + end).to_string()),
                ("step", step.to_owned()),
            ],
        ));
    }
    out
}

async fn ask(
    client: &reqwest::Client,
    base: &str,
    endpoint: &str,
    query: &str,
    params: &[(&str, String)],
) -> Result<(u16, Value)> {
    let mut form: Vec<(&str, String)> = vec![("query", query.to_owned())];
    form.extend(params.iter().cloned());
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/{endpoint}"), &form)?;
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

fn number(v: &Value) -> Option<f64> {
    match v.as_str()? {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn same_pair(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_array(), b.as_array()) else {
        return false;
    };
    a.len() == 2
        && b.len() == 2
        && a[0].as_f64() == b[0].as_f64()
        && match (number(&a[1]), number(&b[1])) {
            (Some(x), Some(y)) => close(x, y),
            _ => a[1] == b[1],
        }
}

/// The series of a vector or matrix result, by their label sets.
fn by_labels(result: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = result
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| (s["metric"].to_string(), s.clone()))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// How many values an answer holds.
fn count_values(answer: &Value) -> usize {
    let result = &answer["data"]["result"];
    match answer["data"]["resultType"].as_str() {
        Some("vector") => result.as_array().map_or(0, Vec::len),
        Some("matrix") => result.as_array().map_or(0, |a| {
            a.iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .sum()
        }),
        _ => 1,
    }
}

/// Whether two successful answers agree.
fn agree(prom: &Value, trib: &Value) -> bool {
    let (p, t) = (&prom["data"], &trib["data"]);
    if p["resultType"] != t["resultType"] {
        return false;
    }
    match p["resultType"].as_str() {
        Some("scalar") => same_pair(&p["result"], &t["result"]),
        Some("string") => p["result"] == t["result"],
        Some("vector") | Some("matrix") => {
            let (ps, ts) = (by_labels(&p["result"]), by_labels(&t["result"]));
            ps.len() == ts.len()
                && ps.iter().zip(&ts).all(|((pl, pv), (tl, tv))| {
                    if pl != tl {
                        return false;
                    }
                    if let (Some(a), Some(b)) = (pv["values"].as_array(), tv["values"].as_array()) {
                        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_pair(x, y))
                    } else {
                        same_pair(&pv["value"], &tv["value"])
                    }
                })
        }
        _ => false,
    }
}

/// Prometheus on a data directory of blocks made from `openmetrics`.
async fn start_prometheus(
    dir: &TestDir,
    openmetrics: &str,
) -> Result<(tokio::process::Child, String)> {
    let prometheus = tool("TRIBUTARY_PROMETHEUS", "/usr/bin/prometheus", "prometheus")?;
    let promtool = tool("TRIBUTARY_PROMTOOL", "/usr/bin/promtool", "prometheus")?;
    let om = dir.join("data.om");
    std::fs::write(&om, openmetrics)?;
    let data = dir.join("prometheus-data");
    let out = std::process::Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&data)
        .output()
        .context("run promtool tsdb create-blocks-from openmetrics")?;
    ensure!(
        out.status.success(),
        "promtool create-blocks-from failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "scrape_configs: []\n")?;
    let addr = free_addr()?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let child = tokio::process::Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        // The data is from 2023: keep it.
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("start prometheus")?;
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    let ready = format!("{url}/-/ready");
    eventually(PATIENCE, "prometheus is ready", || async {
        let r = client.get(&ready).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    Ok((child, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_as_prometheus_does() -> Result<()> {
    let dir = TestDir::new("promql-differential")?;
    let data = promql_data::generate();
    let (_prometheus, prom_url) = start_prometheus(&dir, &promql_data::openmetrics(&data)).await?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    promql_data::ingest(&collector.url(), &data).await?;
    let trib_url = collector.http_url();

    let client = reqwest::Client::new();
    let cases = corpus()?;
    let (mut agreed, mut refused, mut failures) = (0, 0, Vec::new());
    // Values compared, so that agreement on empty answers cannot pass.
    let mut values = 0usize;
    for case in &cases {
        if case.expect_422 {
            let params = vec![("time", (T0 + 1800).to_string())];
            let (status, body) = ask(&client, &trib_url, "query", &case.query, &params).await?;
            if status == 422 && body["errorType"] == "execution" {
                refused += 1;
            } else {
                failures.push(format!(
                    "{}: expected 422, got {status}: {body}",
                    case.query
                ));
            }
            continue;
        }
        let mut ok = true;
        for (endpoint, params) in evaluations() {
            if case.instant_only && endpoint != "query" {
                continue;
            }
            let (ps, prom) = ask(&client, &prom_url, endpoint, &case.query, &params).await?;
            let (ts, trib) = ask(&client, &trib_url, endpoint, &case.query, &params).await?;
            let same = if ps == 200 {
                values += count_values(&prom);
                ts == 200 && agree(&prom, &trib)
            } else {
                ts == ps && prom["errorType"] == trib["errorType"]
            };
            if !same {
                ok = false;
                failures.push(format!(
                    "{} ({endpoint} {params:?}):\n  prometheus {ps}: {prom}\n  tributary  {ts}: {trib}",
                    case.query
                ));
                break;
            }
        }
        if ok {
            agreed += 1;
        }
    }
    failures.extend(same_bytes(&client, &prom_url, &trib_url).await?);
    failures.extend(promtool_works(&trib_url).await?);
    failures.extend(status_codes(&client, &trib_url).await?);
    let compared = cases.iter().filter(|c| !c.expect_422).count();
    println!(
        "{agreed} of {compared} corpus queries agree with Prometheus ({values} values compared); \
         {refused} refused with 422 as marked"
    );
    ensure!(
        values > 100_000,
        "only {values} values compared: is the data set loaded?"
    );
    for f in &failures {
        println!("DISAGREE {f}\n");
    }
    ensure!(
        failures.is_empty(),
        "{} corpus queries disagree (above)",
        failures.len()
    );
    Ok(())
}

/// Answers holding awkward strings (`promql_data::AWKWARD_LABEL`, error
/// messages with `<`, `&`) are the same bytes from both: the same key
/// order, the same escapes. Returns the failures.
async fn same_bytes(client: &reqwest::Client, prom: &str, trib: &str) -> Result<Vec<String>> {
    let at = (T0 + 1800).to_string();
    let (start, end) = ((T0 + 1800).to_string(), (T0 + 1920).to_string());
    let calls: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "query",
            vec![("query", "tr_label_probe".into()), ("time", at.clone())],
        ),
        (
            "query_range",
            vec![
                ("query", "tr_label_probe".into()),
                ("start", start.clone()),
                ("end", end.clone()),
                ("step", "60".into()),
            ],
        ),
        (
            "series",
            vec![
                ("match[]", "tr_label_probe".into()),
                ("start", start.clone()),
                ("end", end.clone()),
            ],
        ),
        (
            "label/text/values",
            vec![("start", start.clone()), ("end", end.clone())],
        ),
        (
            "query",
            vec![
                (
                    "query",
                    r#"label_replace(tr_label_probe, "<&>", "", "text", "")"#.into(),
                ),
                ("time", at.clone()),
            ],
        ),
        (
            "query",
            vec![
                ("query", r#"count_values("<a>", tr_label_probe)"#.into()),
                ("time", at),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (endpoint, params) in calls {
        let mut bodies = Vec::new();
        for base in [prom, trib] {
            let url =
                reqwest::Url::parse_with_params(&format!("{base}/api/v1/{endpoint}"), &params)?;
            let resp = client.get(url).send().await?;
            bodies.push((resp.status().as_u16(), resp.text().await?));
        }
        // The data set's awkward value is in the answers (escaped), so
        // that two empty answers cannot pass.
        let awkward = endpoint.starts_with("label") || params[0].1 == "tr_label_probe";
        if awkward && !bodies[0].1.contains(r#"f\u003cg\u003e\u0026h\u2028i"#) {
            failures.push(format!(
                "{endpoint} {params:?}: Prometheus's answer lacks the awkward label: {}",
                bodies[0].1
            ));
        }
        if bodies[0] != bodies[1] {
            failures.push(format!(
                "{endpoint} {params:?}: not the same bytes\n  prometheus {}: {}\n  tributary  {}: {}",
                bodies[0].0, bodies[0].1, bodies[1].0, bodies[1].1
            ));
        }
    }
    Ok(failures)
}

/// `promtool query ...` against the collector: each must succeed and
/// print what it asked for. Returns the failures.
async fn promtool_works(url: &str) -> Result<Vec<String>> {
    let promtool = tool("TRIBUTARY_PROMTOOL", "/usr/bin/promtool", "prometheus")?;
    let t = (T0 + 1800).to_string();
    let (start, end) = ((T0 + 600).to_string(), (T0 + 1200).to_string());
    let runs: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "instant".into(),
                format!("--time={t}"),
                url.into(),
                "sum by (agent) (tr_up)".into(),
            ],
            "edge-1",
        ),
        (
            vec![
                "range".into(),
                format!("--start={start}"),
                format!("--end={end}"),
                "--step=1m".into(),
                url.into(),
                "rate(tr_requests_total{device=\"d01\"}[5m])".into(),
            ],
            "d01",
        ),
        // Without --start/--end promtool asks for the last 9999 hours,
        // long after the data set: Prometheus, and Tributary, answer
        // nothing then.
        (
            vec![
                "series".into(),
                format!("--start={start}"),
                format!("--end={end}"),
                "--match=tr_temp_celsius{device=\"d02\"}".into(),
                url.into(),
            ],
            "d02",
        ),
        (
            vec![
                "labels".into(),
                format!("--start={start}"),
                format!("--end={end}"),
                url.into(),
                "device".into(),
            ],
            "d09",
        ),
    ];
    let mut failures = Vec::new();
    for (args, expect) in runs {
        let out = tokio::process::Command::new(&promtool)
            .arg("query")
            .args(&args)
            .output()
            .await
            .context("run promtool query")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains(expect) {
            failures.push(format!(
                "promtool query {args:?}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(failures)
}

/// Bad, unsupported and over-limit queries get Prometheus's status codes
/// and error types. Returns the failures.
async fn status_codes(client: &reqwest::Client, url: &str) -> Result<Vec<String>> {
    let t = vec![("time", (T0 + 1800).to_string())];
    let wide = vec![
        ("start", T0.to_string()),
        ("end", (T0 + 20_000).to_string()),
        ("step", "1".to_owned()),
    ];
    // (endpoint, query, parameters, status, errorType)
    type Check<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u16, &'a str);
    let checks: Vec<Check> = vec![
        ("query", "sum(", t.clone(), 400, "bad_data"),
        ("query", "rate(tr_up)", t.clone(), 400, "bad_data"),
        ("query", "days_in_month(tr_up)", t.clone(), 422, "execution"),
        ("query_range", "tr_up", wide, 422, "execution"),
        (
            "query",
            "tr_up + on(agent) tr_up",
            t.clone(),
            422,
            "execution",
        ),
    ];
    let mut failures = Vec::new();
    for (endpoint, query, params, status, kind) in checks {
        let (got, body) = ask(client, url, endpoint, query, &params).await?;
        if got != status || body["errorType"] != kind || body["status"] != "error" {
            failures.push(format!(
                "{query}: expected {status} {kind}, got {got}: {body}"
            ));
        }
    }
    // POST with a form body answers as GET does.
    let resp = client
        .post(format!("{url}/api/v1/query"))
        .form(&[("query", "vector(2)"), ("time", "1700000000")])
        .send()
        .await?;
    let body: Value = serde_json::from_str(&resp.text().await?)?;
    if body["data"]["result"][0]["value"] != serde_json::json!([1700000000, "2"]) {
        failures.push(format!("POST /api/v1/query: {body}"));
    }
    Ok(failures)
}

#[test]
fn the_comparison_sees_differences() {
    let answer = |v: &str, device: &str| {
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"device": device}, "value": [1700000000.5, v]}
        ]}})
    };
    assert!(agree(&answer("1.5", "a"), &answer("1.5000000000001", "a")));
    assert!(agree(&answer("NaN", "a"), &answer("NaN", "a")));
    assert!(!agree(&answer("1.5", "a"), &answer("1.5001", "a")));
    assert!(!agree(&answer("1.5", "a"), &answer("1.5", "b")));
    assert!(!agree(&answer("+Inf", "a"), &answer("NaN", "a")));
    let empty = serde_json::json!({"data": {"resultType": "vector", "result": []}});
    assert!(!agree(&answer("1", "a"), &empty));
}
