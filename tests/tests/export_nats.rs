//! NATS JetStream exports against real servers: the machine's
//! `nats-server` (127.0.0.1:4222, JetStream; JSON messages) and a
//! three-node JetStream cluster this test starts on loopback with a
//! replicated stream (R3; protobuf messages). Sim agents stream while the
//! collector is SIGKILLed and restarted several times (and, on the
//! cluster, one node is SIGKILLed and restarted): afterwards every reading
//! the store holds is in the stream exactly once — counted by reading
//! identity (series key, timestamp, value) and by `Nats-Msg-Id` (no id
//! twice) — and the stream holds nothing else.
//!
//! A third test reaches a nats-server that speaks only TLS, verifies
//! client certificates and wants a token: `tls://` with `[exports.tls]`
//! and `token_file`, and refuses a server whose certificate another CA
//! signed. A fourth authenticates with nkeys: a server that
//! knows one user nkey (`nkey_seed_file`), a server in operator mode (an
//! operator, an account and a user JWT this test signs; `credentials_file`
//! holds the user's `.creds`), and an export with a seed the first server
//! does not know, whose refusals are counted and logged under its name
//! while the others deliver. A fifth points an export with `max_lag` at
//! a port nobody listens on: every committed reading skipped and counted.
//!
//! Each test uses its own stream name and subject prefix.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use prost::Message as _;
use serde_json::Value;

use tributary_collector::config::exports::{ExportTls, NatsAuth};
use tributary_collector::export::nats::NatsTls;
use tributary_collector::export::nats::nkey::{Credentials, KeyKind, KeyPair, base64url};
use tributary_collector::model::StoredValue;
use tributary_collector::query::{chunk_from_proto, series_from_proto};
use tributary_collector::store::export::CommitLog;
use tributary_proto::v1 as pb;
use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, kind_and_text, sim_agent_config, stored_points, wait_for_counters,
};
use tributary_tests::peers::nats::{
    Access, NatsCluster, SHARED_NATS, StreamMsg, TlsNats, delete_stream, read_stream,
    read_stream_with, start_server,
};
use tributary_tests::process::{TestDir, eventually, free_addr};

mod tls_support;

const AGENTS: usize = 2;
const DEVICES: usize = 3;

/// A reading as (agent, device, metric, labels, unit, ts_ns, kind, value text).
type Identity = (
    String,
    String,
    String,
    BTreeMap<String, String>,
    String,
    i64,
    i64,
    String,
);

fn identity(
    key: &tributary_collector::model::SeriesKey,
    ts_ns: i64,
    value: &StoredValue,
) -> Identity {
    let (kind, text) = kind_and_text(value);
    (
        key.agent.clone(),
        key.device.clone(),
        key.metric.clone(),
        key.labels.clone(),
        key.unit.clone(),
        ts_ns,
        kind,
        text,
    )
}

/// Every reading of the test's agents in the store, counted.
fn stored(db: &std::path::Path, prefix: &str) -> Result<HashMap<Identity, usize>> {
    let mut out = HashMap::new();
    for (meta, points) in stored_points(db, "", "", "")? {
        if !meta.key.agent.starts_with(prefix) {
            continue;
        }
        for p in points {
            *out.entry(identity(&meta.key, p.ts_ns, &p.value))
                .or_default() += 1;
        }
    }
    Ok(out)
}

/// A JSON message's readings (README "Exports").
fn json_readings(v: &Value) -> Result<Vec<Identity>> {
    let mut out = Vec::new();
    for s in v["series"].as_array().context("no series array")? {
        let key = tributary_collector::model::SeriesKey {
            agent: s["agent"].as_str().context("agent")?.to_owned(),
            device: s["device"].as_str().context("device")?.to_owned(),
            metric: s["metric"].as_str().context("metric")?.to_owned(),
            labels: serde_json::from_value(s["labels"].clone())?,
            unit: s["unit"].as_str().context("unit")?.to_owned(),
        };
        ensure!(
            key.agent == v["agent"].as_str().unwrap_or(""),
            "series of another agent"
        );
        for p in s["points"].as_array().context("no points")? {
            let ts = p["ts_ns"].as_i64().context("ts_ns")?;
            let value = if let Some(x) = p.get("f64") {
                match x {
                    Value::String(t) if t == "NaN" => StoredValue::F64(f64::NAN),
                    Value::String(t) if t == "+Inf" => StoredValue::F64(f64::INFINITY),
                    Value::String(t) if t == "-Inf" => StoredValue::F64(f64::NEG_INFINITY),
                    x => StoredValue::F64(x.as_f64().context("f64")?),
                }
            } else if let Some(x) = p.get("i64") {
                StoredValue::I64(x.as_i64().context("i64")?)
            } else if let Some(x) = p.get("bool") {
                StoredValue::Bool(x.as_bool().context("bool")?)
            } else if let Some(x) = p.get("str") {
                StoredValue::Str(x.as_str().context("str")?.to_owned())
            } else if let Some(f) = p.get("failure") {
                let m = f["message"].as_str().context("message")?.to_owned();
                match f["status"].as_str() {
                    Some("timeout") => StoredValue::Timeout(m),
                    Some("error") => StoredValue::Error(m),
                    other => bail!("failure status {other:?}"),
                }
            } else {
                bail!("point without a value: {p}");
            };
            out.push(identity(&key, ts, &value));
        }
    }
    Ok(out)
}

/// A protobuf message's readings.
fn protobuf_readings(payload: &[u8]) -> Result<Vec<Identity>> {
    let m = pb::ExportMessage::decode(payload).context("decode ExportMessage")?;
    let mut out = Vec::new();
    for chunk in m.series {
        if let Some(s) = &chunk.series {
            ensure!(s.agent == m.agent, "series of another agent");
            let _ = series_from_proto(s.clone());
        }
        let (meta, points) = chunk_from_proto(chunk)?;
        for p in points {
            ensure!(p.received_ns == m.received_ns, "point received_ns differs");
            out.push(identity(&meta.key, p.ts_ns, &p.value));
        }
    }
    Ok(out)
}

/// The stream's readings counted, and checks that no message id is there
/// twice and every subject is the template's.
fn streamed(
    msgs: &[StreamMsg],
    json: bool,
    subject_prefix: &str,
) -> Result<HashMap<Identity, usize>> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut out = HashMap::new();
    for m in msgs {
        let id = m
            .msg_id
            .as_deref()
            .context("a message without Nats-Msg-Id")?;
        *ids.entry(id).or_default() += 1;
        // The id names the agent batch (agent, epoch, seq) and the part.
        let (readings, batch) = if json {
            let v: Value = serde_json::from_slice(&m.payload).context("message is not JSON")?;
            let batch = format!(
                ".{}.{}.{}.{}",
                v["agent"].as_str().context("no agent")?,
                v["epoch"].as_u64().context("no epoch")?,
                v["seq"].as_u64().context("no seq")?,
                v["part"].as_u64().context("no part")?
            );
            (json_readings(&v)?, batch)
        } else {
            let msg = pb::ExportMessage::decode(&m.payload[..]).context("decode ExportMessage")?;
            let batch = format!(".{}.{}.{}.{}", msg.agent, msg.epoch, msg.seq, msg.part);
            (protobuf_readings(&m.payload)?, batch)
        };
        ensure!(
            id.ends_with(&batch) && msg_seq(&batch) != Some(0),
            "message id {id} does not name its batch {batch}"
        );
        ensure!(!readings.is_empty(), "message {id} holds no reading");
        for r in readings {
            // tributary.{agent}.{device}, sanitised (the test's names are).
            let want = format!("{subject_prefix}.{}.{}", r.0, r.1);
            ensure!(
                m.subject == want,
                "subject {} for a reading of {want}",
                m.subject
            );
            *out.entry(r).or_default() += 1;
        }
    }
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        twice.is_empty(),
        "message ids in the stream more than once: {twice:?}"
    );
    Ok(out)
}

/// The seq of a `.agent.epoch.seq.part` suffix (agents number batches
/// from 1: 0 means the message carried no batch identity).
fn msg_seq(batch: &str) -> Option<u64> {
    batch.rsplit('.').nth(1)?.parse().ok()
}

/// Compares, printing what differs.
fn compare(want: &HashMap<Identity, usize>, got: &HashMap<Identity, usize>) -> Result<()> {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    let stored_twice: Vec<_> = want.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        missing.is_empty() && extra.is_empty() && twice.is_empty() && stored_twice.is_empty(),
        "stream vs store: {} stored, {} streamed; missing {} (e.g. {:?}), extra {} (e.g. {:?}), \
         streamed twice {} (e.g. {:?}), stored twice {}",
        want.len(),
        got.len(),
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        twice.len(),
        twice.first(),
        stored_twice.len()
    );
    Ok(())
}

/// Waits until the export's cursor has passed everything committed.
async fn caught_up(db: &std::path::Path) -> Result<()> {
    let log = CommitLog::sqlite(db.to_path_buf());
    eventually(
        PATIENCE,
        "the nats export has sent every committed batch",
        || {
            let log = log.clone();
            async move {
                let rows = log.status().await.ok()?;
                let (c, p) = rows.first()?;
                (p.readings == 0 && p.end == c.position).then_some(())
            }
        },
    )
    .await
}

/// Rewrites the commit log as a rebuilt log (or another collector's)
/// would number it (every position moved by a million) and puts the
/// export's cursor back before the oldest batch left (the collector is
/// stopped); returns how many batches that is. Ids tied to log positions
/// would all be new.
fn rewind(db: &std::path::Path) -> Result<i64> {
    let c = rusqlite::Connection::open(db)?;
    c.execute_batch(
        "UPDATE export_log SET id = id + 1000000; \
         UPDATE sqlite_sequence SET seq = seq + 1000000 WHERE name = 'export_log';",
    )?;
    let (first, n): (Option<i64>, i64) =
        c.query_row("SELECT MIN(id), COUNT(*) FROM export_log", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let Some(first) = first else {
        return Ok(0);
    };
    c.execute(
        "UPDATE export_cursors SET position = ?1, inflight = 0",
        [first - 1],
    )?;
    Ok(n)
}

fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{label}_{}_{nanos}", std::process::id())
}

struct Run<'a> {
    label: &'a str,
    url: String,
    /// An address to read the stream from afterwards.
    read_from: String,
    replicas: u8,
    json: bool,
}

/// Starts the agents and the collector with a nats export, SIGKILLs and
/// restarts the collector `kills` times (with a cluster: node 0, the
/// first server of the url and so the one the collector publishes
/// through, is SIGKILLed before the first collector kill and comes back
/// while the restarted collector publishes through another node), then
/// compares the stream with the store.
async fn kills_and_compares(
    run: Run<'_>,
    dir: &TestDir,
    kills: usize,
    mut cluster: Option<&mut NatsCluster>,
) -> Result<()> {
    let stream = unique(&run.label.to_uppercase().replace('-', "_"));
    let prefix = unique("tribtest");
    let agent_prefix = format!("{}-", run.label);
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"{}\"\nstream = \"{stream}\"\n\
             subject = \"{prefix}.{{agent}}.{{device}}\"\nformat = \"{}\"\ncreate_stream = true\n\
             replicas = {}\nduplicate_window = \"10m\"\nmax_readings_per_message = 50\n\
             timeout = \"2s\"\nmax_backoff = \"1s\"\n",
            run.url,
            if run.json { "json" } else { "protobuf" },
            run.replicas
        ),
    )?;
    let config = config.display().to_string();
    let args = ["--config", config.as_str()];
    let addr = free_addr()?;
    let mut collector = Collector::start_with(dir, addr, &args).await?;
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let id = format!("{agent_prefix}{a}");
        let cfg = sim_agent_config(&id, &[collector.url()], DEVICES, "20ms");
        agents.push(Agent::start(dir, &id, &cfg, "")?);
    }
    for a in &agents {
        wait_for_counters(&collector.db, &a.id, DEVICES, 20).await?;
    }
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let node_down = round == 0 && cluster.is_some();
        if node_down && let Some(c) = cluster.as_deref_mut() {
            // Under the publishing collector: PubAcks in flight are lost.
            c.kill(0).await?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        collector.proc.kill().await?;
        collector = Collector::start_with(dir, addr, &args).await?;
        if node_down && let Some(c) = cluster.as_deref_mut() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.restart(dir, 0).await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for a in &mut agents {
        a.stop().await?;
    }
    let want = stored(&collector.db, &agent_prefix)?;
    let total: usize = want.values().sum();
    ensure!(
        total >= AGENTS * DEVICES * 50,
        "only {total} readings stored"
    );
    if let Err(e) = caught_up(&collector.db).await {
        bail!("{e:#}\ncollector log:\n{}", collector.log());
    }
    let msgs = read_stream(&run.read_from, &stream).await?;
    let got = streamed(&msgs, run.json, &prefix)?;
    if let Err(e) = compare(&want, &got) {
        bail!("{e:#}\ncollector log:\n{}", collector.log());
    }
    let resent = collector.log().matches("sending again").count();
    if cluster.is_some() {
        ensure!(
            resent > 0,
            "a node died under the collector and nothing was published again:\n{}",
            collector.log()
        );
    }
    let status = collector
        .proc
        .terminate(Duration::from_secs(20))
        .await
        .context("stop the collector")?;
    ensure!(status.success(), "collector exited with {status}");
    // A replay from a rewritten log: positions moved, the cursor put back
    // to the oldest batch still in the log; the restarted collector
    // publishes those batches again with the same ids (the batches'
    // identities), and JetStream keeps none of the copies.
    let replayed = rewind(&collector.db)?;
    ensure!(replayed > 0, "nothing left in the commit log to replay");
    let collector = Collector::start_with(dir, addr, &args).await?;
    if let Err(e) = caught_up(&collector.db).await {
        bail!("{e:#}\ncollector log:\n{}", collector.log());
    }
    let again = read_stream(&run.read_from, &stream).await?;
    ensure!(
        again.len() == msgs.len(),
        "the replay of {replayed} batches added {} messages",
        again.len() as i64 - msgs.len() as i64
    );
    compare(&want, &streamed(&again, run.json, &prefix)?)?;
    ensure!(
        collector.log().contains("already in the stream"),
        "the collector did not see its replay acknowledged as duplicates:\n{}",
        collector.log()
    );
    println!(
        "{}: {total} readings committed, each in stream {stream} exactly once ({} messages, \
         no id twice) after {kills} collector SIGKILLs; {resent} publish failures retried in \
         the collectors' log; a replay of {replayed} batches added no message",
        run.label,
        msgs.len()
    );
    delete_stream(&run.read_from, &stream).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_jetstream_holds_each_committed_reading_once_across_kills() -> Result<()> {
    let dir = TestDir::new("export-nats-single")?;
    let run = Run {
        label: "nats1",
        url: format!("nats://{SHARED_NATS}"),
        read_from: SHARED_NATS.to_owned(),
        replicas: 1,
        json: true,
    };
    kills_and_compares(run, &dir, 3, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_stream_on_a_three_node_cluster_holds_each_reading_once() -> Result<()> {
    let dir = TestDir::new("export-nats-cluster")?;
    let mut cluster = NatsCluster::start(&dir, "tribjs", 3).await?;
    let run = Run {
        label: "nats3",
        url: cluster.url(),
        read_from: cluster.addr(1),
        replicas: 3,
        json: false,
    };
    let result = kills_and_compares(run, &dir, 3, Some(&mut cluster)).await;
    if let Err(e) = result {
        bail!("{e:#}\nnats logs:\n{}", cluster.logs());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_and_a_token_reaches_a_verifying_server() -> Result<()> {
    let dir = TestDir::new("export-nats-tls")?;
    // The test CA signed the server's certificate (for 127.0.0.1) and an
    // operator's client certificate; the server verifies clients with it.
    let pki = tls_support::Pki::new(dir.path())?;
    let server_cert = (dir.join("collector.pem"), dir.join("collector.key"));
    let token = "tok-3f9a";
    let nats = TlsNats::start(
        &dir,
        "natstls",
        (&server_cert.0, &server_cert.1),
        &pki.ca,
        token,
    )
    .await?;
    let addr = nats.peer.addr.to_string();
    std::fs::write(dir.join("nats.token"), format!("{token}\n"))?;
    let stream = unique("NATSTLS");
    let prefix = unique("tribtls");
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"tls://{addr}\"\n\
             stream = \"{stream}\"\nsubject = \"{prefix}.{{agent}}.{{device}}\"\nformat = \"json\"\n\
             create_stream = true\ntoken_file = \"nats.token\"\ntimeout = \"2s\"\nmax_backoff = \"1s\"\n\
             [exports.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.ca.display(),
            pki.operator.0.display(),
            pki.operator.1.display()
        ),
    )?;
    let config = config.display().to_string();
    let collector =
        Collector::start_with(&dir, free_addr()?, &["--config", config.as_str()]).await?;
    let mut agent = Agent::start(
        &dir,
        "tls-0",
        &sim_agent_config("tls-0", &[collector.url()], DEVICES, "20ms"),
        "",
    )?;
    wait_for_counters(&collector.db, "tls-0", DEVICES, 20).await?;
    agent.stop().await?;
    let want = stored(&collector.db, "tls-")?;
    if let Err(e) = caught_up(&collector.db).await {
        bail!(
            "{e:#}\ncollector log:\n{}\nnats log:\n{}",
            collector.log(),
            nats.peer.log()
        );
    }
    // Read back over TLS with the same client certificate and token.
    let access = Access {
        auth: NatsAuth::Token(token.to_owned()),
        tls: Some(
            NatsTls::new(&ExportTls {
                ca: Some(pki.ca.clone()),
                identity: Some(pki.operator.clone()),
            })
            .map_err(anyhow::Error::msg)?,
        ),
    };
    let msgs = read_stream_with(&addr, &stream, &access).await?;
    compare(&want, &streamed(&msgs, true, &prefix)?)?;
    // Without the client certificate the server refuses the handshake;
    // without TLS the client says the server requires it.
    let no_cert = Access {
        auth: access.auth.clone(),
        tls: Some(
            NatsTls::new(&ExportTls {
                ca: Some(pki.ca.clone()),
                identity: None,
            })
            .map_err(anyhow::Error::msg)?,
        ),
    };
    ensure!(
        read_stream_with(&addr, &stream, &no_cert).await.is_err(),
        "a client without a certificate was let in"
    );
    // A CA that did not sign the server's certificate: the handshake is
    // refused, saying why.
    let other = dir.join("other-pki");
    std::fs::create_dir_all(&other)?;
    let other = tls_support::Pki::new(&other)?;
    let untrusted = Access {
        auth: access.auth.clone(),
        tls: Some(
            NatsTls::new(&ExportTls {
                ca: Some(other.ca.clone()),
                identity: Some(pki.operator.clone()),
            })
            .map_err(anyhow::Error::msg)?,
        ),
    };
    let refused = read_stream_with(&addr, &stream, &untrusted).await;
    ensure!(
        refused.as_ref().is_err_and(|e| {
            let text = format!("{e:#}");
            text.contains("tls: ") && text.contains("certificate")
        }),
        "a server certificate from an untrusted CA: {refused:?}"
    );
    let plain = read_stream(&addr, &stream).await;
    ensure!(
        plain
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("requires TLS")),
        "a plain client: {plain:?}"
    );
    println!(
        "nats over TLS (client certificate, token): {} readings committed, each in the stream once ({} messages)",
        want.values().sum::<usize>(),
        msgs.len()
    );
    Ok(())
}

/// A JWT as NATS reads them (header `ed25519-nkey`), `claims` signed by
/// `issuer` about `subject`.
fn nats_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> Result<String> {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(5);
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": unique("JTI"),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
    let sig = base64url(&issuer.sign(signed.as_bytes()).map_err(anyhow::Error::msg)?);
    Ok(format!("{signed}.{sig}"))
}

/// The export's row in the store, by name.
async fn cursor(
    db: &std::path::Path,
    name: &str,
) -> Result<
    Option<(
        tributary_collector::store::export::CursorRow,
        tributary_collector::store::export::Pending,
    )>,
> {
    let rows = CommitLog::sqlite(db.to_path_buf()).status().await?;
    Ok(rows.into_iter().find(|(c, _)| c.name == name))
}

/// `tributary_export_failed_requests_total{export="<name>"}` from the
/// collector's `/metrics`.
async fn failed_requests(collector: &Collector, name: &str) -> Result<f64> {
    let text = reqwest::get(format!("{}/metrics", collector.http_url()))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let prefix = format!("tributary_export_failed_requests_total{{export=\"{name}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {prefix} in /metrics"))?
        .trim()
        .parse()
        .context("a counter that is not a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seeds_and_creds_files_authenticate_and_a_wrong_key_is_counted() -> Result<()> {
    let dir = TestDir::new("export-nats-nkey")?;
    // A server that knows one user by its public nkey.
    let user = KeyPair::generate(KeyKind::User).map_err(anyhow::Error::msg)?;
    let stranger = KeyPair::generate(KeyKind::User).map_err(anyhow::Error::msg)?;
    let nk = start_server(
        &dir,
        "natsnkey",
        &format!(
            "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}",
            user.public_key()
        ),
    )
    .await?;
    // A server in operator mode: operator → account (JetStream allowed) →
    // user, each JWT signed by the key above it; the user's .creds file.
    let operator = KeyPair::generate(KeyKind::Operator).map_err(anyhow::Error::msg)?;
    let account = KeyPair::generate(KeyKind::Account).map_err(anyhow::Error::msg)?;
    let jwt_user = KeyPair::generate(KeyKind::User).map_err(anyhow::Error::msg)?;
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    )?;
    // JetStream in operator mode needs a system account too.
    let system = KeyPair::generate(KeyKind::Account).map_err(anyhow::Error::msg)?;
    let account_jwt = |key: &KeyPair, name: &str, jetstream: i64| {
        nats_jwt(
            &operator,
            &key.public_key(),
            name,
            serde_json::json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": jetstream, "disk_storage": jetstream,
                    "streams": jetstream, "consumer": jetstream
                },
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2
            }),
        )
    };
    let system_jwt = account_jwt(&system, "SYS", 0)?;
    let account_jwt = account_jwt(&account, "test-account", -1)?;
    let user_jwt = nats_jwt(
        &account,
        &jwt_user.public_key(),
        "tributary",
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2
        }),
    )?;
    std::fs::write(dir.join("operator.jwt"), &operator_jwt)?;
    let op = start_server(
        &dir,
        "natsop",
        &format!(
            "operator: \"{}\"\nsystem_account: \"{}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{account_jwt}\"\n  {}: \"{system_jwt}\"\n}}",
            dir.join("operator.jwt").display(),
            system.public_key(),
            account.public_key(),
            system.public_key()
        ),
    )
    .await?;
    let creds_text = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        jwt_user.seed_text()
    );
    std::fs::write(dir.join("tributary.creds"), &creds_text)?;
    std::fs::write(dir.join("user.nk"), format!("{}\n", user.seed_text()))?;

    let (s_nk, s_op, s_wrong) = (unique("NKEY"), unique("CREDS"), unique("WRONG"));
    let prefix = unique("tribnk");
    let export = |name: &str, addr: &std::net::SocketAddr, stream: &str, auth: &str| {
        format!(
            "[[exports]]\nname = \"{name}\"\nkind = \"nats\"\nurl = \"nats://{addr}\"\n\
             stream = \"{stream}\"\nsubject = \"{prefix}.{{agent}}.{{device}}\"\nformat = \"json\"\n\
             create_stream = true\n{auth}\ntimeout = \"2s\"\nmax_backoff = \"500ms\"\n\n"
        )
    };
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}{}",
            export("nk", &nk.addr, &s_nk, "nkey_seed_file = \"user.nk\""),
            export(
                "creds",
                &op.addr,
                &s_op,
                "credentials_file = \"tributary.creds\""
            ),
            export(
                "wrong",
                &nk.addr,
                &s_wrong,
                &format!("nkey_seed = \"{}\"", stranger.seed_text())
            ),
        ),
    )?;
    let config = config.display().to_string();
    let mut collector =
        Collector::start_with(&dir, free_addr()?, &["--config", config.as_str()]).await?;
    let mut agent = Agent::start(
        &dir,
        "nk-0",
        &sim_agent_config("nk-0", &[collector.url()], DEVICES, "20ms"),
        "",
    )?;
    wait_for_counters(&collector.db, "nk-0", DEVICES, 20).await?;
    agent.stop().await?;
    let want = stored(&collector.db, "nk-")?;
    let db = collector.db.clone();
    for name in ["nk", "creds"] {
        let done = eventually(PATIENCE, &format!("export {name} caught up"), || {
            let db = db.clone();
            async move {
                let (c, p) = cursor(&db, name).await.ok()??;
                (p.readings == 0 && p.end == c.position && c.sent > 0).then_some(())
            }
        })
        .await;
        if let Err(e) = done {
            bail!(
                "{e:#}\ncollector log:\n{}\nnkey server log:\n{}\noperator server log:\n{}",
                collector.log(),
                nk.log(),
                op.log()
            );
        }
    }
    // Read back with the same credentials: every stored reading once.
    let nk_access = Access {
        auth: NatsAuth::Nkey(user.clone()),
        tls: None,
    };
    let msgs = read_stream_with(&nk.addr.to_string(), &s_nk, &nk_access).await?;
    compare(&want, &streamed(&msgs, true, &prefix)?)?;
    let creds = Credentials::parse(&creds_text).map_err(anyhow::Error::msg)?;
    let op_access = Access {
        auth: NatsAuth::Credentials(creds),
        tls: None,
    };
    let creds_msgs = read_stream_with(&op.addr.to_string(), &s_op, &op_access).await?;
    compare(&want, &streamed(&creds_msgs, true, &prefix)?)?;
    // The stranger's key: refused by the server, counted as failed
    // requests, logged under the export's name; nothing sent, the lag
    // stands, and the collector runs on.
    let failed = failed_requests(&collector, "wrong").await?;
    ensure!(failed >= 1.0, "wrong: {failed} failed requests");
    let (c, p) = cursor(&db, "wrong")
        .await?
        .context("no cursor for export wrong")?;
    ensure!(
        c.sent == 0 && p.readings as usize == want.values().sum::<usize>(),
        "wrong: {c:?} {p:?}"
    );
    let log = collector.log();
    ensure!(
        log.lines().any(|l| l.contains("wrong")
            && l.contains("refused the connection")
            && l.contains("Authorization Violation")),
        "no log line names export wrong and the refusal:\n{log}"
    );
    ensure!(
        !log.contains(&stranger.seed_text()[2..]) && !log.contains(&user.seed_text()[2..]),
        "a seed reached the log"
    );
    // Without credentials the servers refuse.
    ensure!(
        read_stream(&nk.addr.to_string(), &s_nk).await.is_err(),
        "the nkey server let a client without a key in"
    );
    ensure!(collector.proc.try_wait()?.is_none(), "the collector exited");
    println!(
        "nats with an nkey and with a .creds file: {} readings committed, each in both streams once \
         ({} and {} messages); a wrong key: {failed} failed requests, nothing sent",
        want.values().sum::<usize>(),
        msgs.len(),
        creds_msgs.len()
    );
    Ok(())
}

/// A nats server that is down for good, with `max_lag = "1s"`: the
/// pipeline gives its pages up once the oldest is that old, and the export
/// skips and counts exactly what it could not send (every committed
/// reading), sending nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_lag_a_nats_export_skips_and_counts_exactly() -> Result<()> {
    let dir = TestDir::new("export-nats-max-lag")?;
    // Bound, then closed: nothing listens there.
    let down = free_addr()?;
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"gone\"\nkind = \"nats\"\nurl = \"nats://{down}\"\n\
             stream = \"NATS_LAG_GONE\"\nsubject = \"natslag.{{agent}}\"\ncreate_stream = true\n\
             max_lag = \"1s\"\nmax_backoff = \"200ms\"\ntimeout = \"1s\"\n"
        ),
    )?;
    let config = config.display().to_string();
    let collector = Collector::start_with(&dir, free_addr()?, &["--config", &config]).await?;
    let mut agent = Agent::start(
        &dir,
        "nlag-0",
        &sim_agent_config("nlag-0", &[collector.url()], 3, "20ms"),
        "",
    )?;
    wait_for_counters(&collector.db, "nlag-0", 3, 100).await?;
    agent.stop().await?;
    let stored = tributary_tests::cluster::agent_counters(&collector.db, "nlag-0")?.readings_stored;
    let log = CommitLog::sqlite(collector.db.clone());
    let row = eventually(PATIENCE, "the export skipped everything", || async {
        let rows = log.status().await.ok()?;
        let (cursor, pending) = rows.into_iter().find(|(c, _)| c.name == "gone")?;
        (pending.readings == 0 && cursor.skipped > 0).then_some(cursor)
    })
    .await?;
    ensure!(
        row.skipped == stored && row.sent == 0,
        "stored {stored} readings; the cursor shows {row:?}"
    );
    ensure!(
        collector
            .log()
            .contains("export skipped committed readings older than max_lag"),
        "the skip is not logged"
    );
    println!(
        "nats max_lag: {stored} readings committed, server down: all {stored} skipped and counted"
    );
    Ok(())
}
