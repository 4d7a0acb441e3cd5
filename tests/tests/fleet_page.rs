//! The fleet page (`/` on the collector's HTTP listener) in a real headless
//! Chromium, against a real collector and agents: what it shows equals what
//! the Query service answers (ListAgents with the name of the collector each
//! agent streams to, ListSeries, Range), a device
//! called `<script>alert(1)</script>` shows as text, a device that stops
//! answering turns down on the page with the cause its agent stored, an
//! export whose receiver is not there shows as ListExports has it (behind,
//! its error, its destination without the password), all
//! without reloading. Screenshots land in `target/fleet-page.png` (1280×800),
//! `target/fleet-page-full.png` (the whole page at that width) and
//! `target/fleet-page-phone.png` (390 wide) for people to look at.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tributary_proto::v1 as pb;

use tributary_collector::model::StoredValue;
use tributary_tests::HttpSim;
use tributary_tests::browser::Browser;
use tributary_tests::cluster::{Agent, Collector, PATIENCE, stored_points, wait_for_counters};
use tributary_tests::process::{TestDir, eventually, free_addr, target_dir};

const SCRIPT_NAME: &str = "<script>alert(1)</script>";
/// The collector's name (`--name`), with markup too.
const COLLECTOR_NAME: &str = "<i>collector</i> 1";
/// A label value and a string value with markup, from exec devices.
const LABEL_MARKUP: &str = "<img src=x onerror=alert(2)>";
const STRING_MARKUP: &str = "<b onmouseover=alert(3)>bold</b>";
/// The password in the export's URL.
const EXPORT_SECRET: &str = "s3cret-pw";

type Query = pb::query_client::QueryClient<tonic::transport::Channel>;

/// (agent, connected, collector) as ListAgents answers.
async fn list_agents(q: &mut Query) -> Result<BTreeSet<(String, bool, String)>> {
    let agents = q.list_agents(pb::ListAgentsRequest {}).await?.into_inner();
    Ok(agents
        .agents
        .into_iter()
        .map(|a| (a.id, a.connected, a.collector))
        .collect())
}

/// (agent, device) of every series ListSeries lists, all pages.
async fn list_devices(q: &mut Query) -> Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = q
            .list_series(pb::ListSeriesRequest {
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.series.into_iter().map(|s| (s.agent, s.device)));
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// The page's agents table as (agent, connected, the collector shown).
async fn page_agents(b: &Browser) -> Result<BTreeSet<(String, bool, String)>> {
    let rows = b
        .eval(
            "[...document.querySelectorAll('#agents tbody tr')]\
             .map(tr => [tr.dataset.agent, tr.dataset.connected === 'true', \
             tr.querySelector('td[data-col=collector]').textContent])",
        )
        .await?;
    let rows: Vec<(String, bool, String)> = serde_json::from_value(rows)?;
    Ok(rows.into_iter().collect())
}

/// A row of the page's exports table.
#[derive(Debug)]
struct ExportRow {
    kind: String,
    destination: String,
    lag: u64,
    sent: String,
    error: String,
}

/// The page's exports table by export name.
async fn page_exports(b: &Browser) -> Result<BTreeMap<String, ExportRow>> {
    let rows = b
        .eval(
            "[...document.querySelectorAll('#exports tbody tr')].map(tr => [tr.dataset.export, \
             tr.dataset.kind, \
             tr.querySelector('td[data-col=destination]').textContent, \
             Number(tr.querySelector('td[data-col=lag]').textContent.replace(/\\D/g, '')), \
             tr.querySelector('td[data-col=sent]').textContent, \
             tr.querySelector('td[data-col=error]').textContent])",
        )
        .await?;
    let rows: Vec<(String, String, String, u64, String, String)> = serde_json::from_value(rows)?;
    Ok(rows
        .into_iter()
        .map(|(name, kind, destination, lag, sent, error)| {
            (
                name,
                ExportRow {
                    kind,
                    destination,
                    lag,
                    sent,
                    error,
                },
            )
        })
        .collect())
}

/// The page's devices table: (agent, device) → (state, outcome, cause).
async fn page_devices(b: &Browser) -> Result<BTreeMap<(String, String), (String, String, String)>> {
    let rows = b
        .eval(
            "[...document.querySelectorAll('#devices tbody tr')].map(tr => [tr.dataset.agent, \
             tr.dataset.device, tr.dataset.up, tr.dataset.outcome, \
             tr.querySelector('td.cause').textContent])",
        )
        .await?;
    let rows: Vec<(String, String, String, String, String)> = serde_json::from_value(rows)?;
    Ok(rows
        .into_iter()
        .map(|(a, d, up, outcome, cause)| ((a, d), (up, outcome, cause)))
        .collect())
}

/// The chart's series id and the points it drew, `[t_ns, value]`.
async fn chart(b: &Browser) -> Result<(u64, Vec<(i64, f64)>)> {
    let v = b
        .eval(
            "(() => { const s = document.querySelector('#chart svg'); \
             return s ? [s.dataset.series, s.dataset.points] : ['', '[]']; })()",
        )
        .await?;
    let (series, points): (String, String) = serde_json::from_value(v)?;
    let points: Vec<(String, f64)> = serde_json::from_str(&points)?;
    let points = points
        .into_iter()
        .map(|(t, v)| Ok((t.parse::<i64>().context("a drawn time")?, v)))
        .collect::<Result<Vec<_>>>()?;
    Ok((series.parse().unwrap_or(0), points))
}

async fn flag(b: &Browser, js: &str) -> Option<()> {
    (b.eval(js).await.ok()? == Value::Bool(true)).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_shows_what_query_answers_and_stays_live() -> Result<()> {
    let dir = TestDir::new("fleet-page")?;
    // One export to a remote write receiver that is not there (its URL
    // with credentials the page must not show): it falls behind, and its
    // failing tries are its last error.
    let nobody = free_addr()?;
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\n\
             url = \"http://user:{EXPORT_SECRET}@{nobody}/api/v1/write\"\nmax_backoff = \"500ms\"\n"
        ),
    )?;
    let config = config.display().to_string();
    let collector = Collector::start_with(
        &dir,
        free_addr()?,
        &["--name", COLLECTOR_NAME, "--config", config.as_str()],
    )
    .await?;
    let meter = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let url = collector.url();
    let edge_1 = format!(
        "id = \"edge-1\"\ncollectors = [\"{url}\"]\n\
         \n[[devices]]\nname = \"counter-1\"\ndriver = \"sim\"\ninterval = \"200ms\"\n\
         \n[[devices]]\nname = \"{SCRIPT_NAME}\"\ndriver = \"sim\"\ninterval = \"500ms\"\n\
         \n[[devices]]\nname = \"meter\"\ndriver = \"http\"\nurl = \"{}\"\nformat = \"json\"\n\
         interval = \"300ms\"\ntimeout = \"1s\"\nbackoff_max = \"300ms\"\n\
         metrics = [{{ name = \"power_w\", pointer = \"/power\", unit = \"W\" }}]\n\
         \n[[devices]]\nname = \"labels\"\ndriver = \"exec\"\ninterval = \"500ms\"\n\
         command = \"/bin/echo\"\nargs = ['tagged{{tag=\"{LABEL_MARKUP}\"}} 1']\nformat = \"prometheus\"\n\
         \n[[devices]]\nname = \"texts\"\ndriver = \"exec\"\ninterval = \"500ms\"\n\
         command = \"/bin/echo\"\nargs = ['{{\"s\": \"{STRING_MARKUP}\"}}']\nformat = \"json\"\n\
         metrics = [{{ name = \"status\", pointer = \"/s\" }}]\n",
        meter.url("/meter")
    );
    let edge_2 = format!(
        "id = \"edge-2\"\ncollectors = [\"{url}\"]\n\
         \n[[devices]]\nname = \"counter-9\"\ndriver = \"sim\"\ninterval = \"500ms\"\n"
    );
    let mut agent_1 = Agent::start(&dir, "edge-1", &edge_1, "")?;
    let mut agent_2 = Agent::start(&dir, "edge-2", &edge_2, "")?;
    wait_for_counters(&collector.db, "edge-1", 2, 3).await?;
    wait_for_counters(&collector.db, "edge-2", 1, 3).await?;
    eventually(PATIENCE, "the meter is stored", || async {
        let p = stored_points(&collector.db, "edge-1", "meter", "power_w").ok()?;
        (!p.is_empty()).then_some(())
    })
    .await?;
    let mut query = Query::connect(url.clone()).await?;

    let browser = Browser::start(&dir).await?;
    let b = &browser;
    b.goto(&format!("{}/", collector.http_url())).await?;
    eventually(PATIENCE, "the page has loaded the fleet", || {
        flag(b, "document.body.dataset.ready === '1'")
    })
    .await?;
    // Set once: still there at the end means the page never reloaded.
    b.eval("window.__notReloaded = true").await?;

    // Agents and devices equal ListAgents and ListSeries.
    // Both stream to this collector, which ListAgents names.
    let agents = list_agents(&mut query).await?;
    ensure!(
        agents.len() == 2
            && agents
                .iter()
                .all(|(_, c, name)| *c && name == COLLECTOR_NAME),
        "{agents:?}"
    );
    let shown = page_agents(b).await?;
    ensure!(
        shown == agents,
        "page shows {shown:?}, ListAgents {agents:?}"
    );
    // The name is text, not markup.
    let name_escaped = b
        .eval(&format!(
            "document.querySelectorAll('#agents i').length === 0 && \
             document.getElementById('agents').innerHTML.includes({html:?})",
            html = "&lt;i&gt;collector&lt;/i&gt; 1"
        ))
        .await?;
    ensure!(
        name_escaped == Value::Bool(true),
        "the collector name was not shown as text"
    );
    let devices = list_devices(&mut query).await?;
    ensure!(devices.contains(&("edge-1".into(), SCRIPT_NAME.into())));
    let shown: BTreeSet<_> = page_devices(b).await?.into_keys().collect();
    ensure!(
        shown == devices,
        "page shows {shown:?}, ListSeries {devices:?}"
    );
    let states = page_devices(b).await?;
    ensure!(
        states
            .values()
            .all(|(up, outcome, _)| up == "up" && outcome == "ok"),
        "{states:?}"
    );

    // The script tag is text: one script element (the page's own), the
    // name shown as typed, escaped in the markup, no alert.
    let escaped = b
        .eval(&format!(
            "document.querySelectorAll('script').length === 1 && \
             [...document.querySelectorAll('#devices tbody th')].some(th => th.textContent === {name:?}) && \
             document.getElementById('devices').innerHTML.includes({html:?})",
            name = SCRIPT_NAME,
            html = "&lt;script&gt;alert(1)&lt;/script&gt;"
        ))
        .await?;
    ensure!(
        escaped == Value::Bool(true),
        "the device name was not shown as text"
    );

    // Chart counter-1 from the keyboard: focus its button, press Enter.
    b.focus("#devices tr[data-agent='edge-1'][data-device='counter-1'] button")
        .await?;
    b.press("Enter").await?;
    eventually(PATIENCE, "the chart drew counter-1", || async move {
        let (_, points) = chart(b).await.ok()?;
        (points.len() >= 5).then_some(())
    })
    .await?;
    let (series, drawn) = chart(b).await?;
    let first = drawn.first().map(|p| p.0).context("no points drawn")?;
    let last = drawn.last().map(|p| p.0).context("no points drawn")?;
    let range = range_points(&mut query, series, "edge-1", "counter-1", first, last + 1).await?;
    ensure!(
        drawn == range,
        "the chart drew {drawn:?}, Range has {range:?}"
    );
    // The sim counter rises by one per poll: no gap, nothing twice.
    ensure!(
        drawn.windows(2).all(|w| w[1].1 == w[0].1 + 1.0),
        "{drawn:?}"
    );

    // Live: newer points arrive without a reload.
    eventually(PATIENCE, "the chart grew live", || async move {
        let (_, now) = chart(b).await.ok()?;
        (now.last()?.0 > last).then_some(())
    })
    .await?;

    // A label and a string value with markup show as text too: in the
    // series picker, the legend and the chart's note.
    for (device, text) in [("labels", LABEL_MARKUP), ("texts", STRING_MARKUP)] {
        b.focus(&format!(
            "#devices tr[data-agent='edge-1'][data-device='{device}'] button"
        ))
        .await?;
        b.press("Enter").await?;
        let js = format!(
            "[...document.querySelectorAll('#series-pick option, #legend, #chart-note')]\
             .some(e => e.textContent.includes({text:?}))"
        );
        eventually(
            PATIENCE,
            &format!("{device}'s markup is shown as text"),
            || flag(b, &js),
        )
        .await?;
    }
    let no_markup = b
        .eval("document.querySelectorAll('img, b, script').length === 1")
        .await?;
    ensure!(
        no_markup == Value::Bool(true),
        "markup from a value became an element"
    );

    // The exports table: the export as ListExports answers it (name, kind,
    // destination without the credentials), behind, nothing sent, and
    // the error of its failing tries.
    let exports = query
        .list_exports(pb::ListExportsRequest {})
        .await?
        .into_inner()
        .exports;
    let [listed] = exports.as_slice() else {
        bail!("ListExports: {exports:?}");
    };
    ensure!(
        listed.name == "vm"
            && listed.kind == "remote_write"
            && !listed.destination.contains(EXPORT_SECRET)
            && listed.destination.contains(&nobody.to_string()),
        "{listed:?}"
    );
    let row = eventually(
        PATIENCE,
        "the page shows the export behind, with its error",
        || async {
            let row = page_exports(b).await.ok()?.remove("vm")?;
            (row.lag > 0 && !row.error.is_empty()).then_some(row)
        },
    )
    .await?;
    let listed = query
        .list_exports(pb::ListExportsRequest {})
        .await?
        .into_inner()
        .exports
        .into_iter()
        .next()
        .context("ListExports lost the export")?;
    ensure!(
        row.kind == listed.kind
            && row.destination == listed.destination
            && row.sent == "0"
            && listed.sent == 0
            && row.error == listed.last_error
            && listed.last_error.contains("onnect"),
        "page {row:?}, ListExports {listed:?}"
    );
    ensure!(
        !b.eval("document.body.innerHTML")
            .await?
            .to_string()
            .contains(EXPORT_SECRET),
        "the page shows the export's password"
    );

    // Take the meter down: it turns down on the page with the cause stored.
    meter.stop().await?;
    let causes = eventually(PATIENCE, "a failed poll of the meter is stored", || async {
        let up = stored_points(&collector.db, "edge-1", "meter", "up").ok()?;
        let down = up
            .iter()
            .flat_map(|(_, p)| p)
            .any(|p| p.value == StoredValue::I64(0));
        let failed = stored_points(&collector.db, "edge-1", "meter", "power_w").ok()?;
        let causes: BTreeSet<String> = failed
            .iter()
            .flat_map(|(_, p)| p)
            .filter_map(|p| match &p.value {
                StoredValue::Error(m) | StoredValue::Timeout(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        (down && !causes.is_empty()).then_some(causes)
    })
    .await?;
    let key = ("edge-1".to_string(), "meter".to_string());
    let (state, outcome, cause) = eventually(PATIENCE, "the page shows the meter down", || async {
        let row = page_devices(b).await.ok()?.remove(&key)?;
        (row.0 == "down").then_some(row)
    })
    .await?;
    ensure!(state == "down" && (outcome == "error" || outcome == "timeout"));
    let all_causes = failure_messages(&collector, "meter")?;
    ensure!(
        all_causes.contains(&cause),
        "the page says {cause:?}; stored causes {causes:?}"
    );

    // Its chart shows the values before and the failed polls after.
    b.focus("#devices tr[data-agent='edge-1'][data-device='meter'] button")
        .await?;
    b.press("Enter").await?;
    eventually(PATIENCE, "the chart shows the meter's failed polls", || {
        flag(
            b,
            "!!document.querySelector('#chart svg .fail') && \
                 document.querySelector('#chart svg').dataset.points !== '[]'",
        )
    })
    .await?;

    // Screenshots with a device down, for people to look at.
    let target = target_dir()?;
    b.eval("window.scrollTo(0, 0)").await?;
    b.screenshot(&target.join("fleet-page.png"), false).await?;
    b.screenshot(&target.join("fleet-page-full.png"), true)
        .await?;
    b.viewport(390, 844).await?;
    b.screenshot(&target.join("fleet-page-phone.png"), true)
        .await?;
    let overflow = b
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await?;
    ensure!(
        overflow == Value::Bool(true),
        "the page is wider than a phone"
    );
    ensure!(
        b.eval("window.__notReloaded === true").await? == Value::Bool(true),
        "the page reloaded"
    );
    let log = b.log().await?;
    ensure!(log.dialogs.is_empty(), "dialogs: {:?}", log.dialogs);
    ensure!(log.errors.is_empty(), "page errors: {:?}", log.errors);
    browser.close().await?;
    agent_1.stop().await?;
    agent_2.stop().await?;
    Ok(())
}

/// Every failure message stored for `device` of edge-1.
fn failure_messages(collector: &Collector, device: &str) -> Result<BTreeSet<String>> {
    Ok(stored_points(&collector.db, "edge-1", device, "")?
        .iter()
        .flat_map(|(_, p)| p)
        .filter_map(|p| match &p.value {
            StoredValue::Error(m) | StoredValue::Timeout(m) => Some(m.clone()),
            _ => None,
        })
        .collect())
}

/// Range's points of series `id` within `[since, until)`, as the chart
/// draws them.
async fn range_points(
    q: &mut Query,
    id: u64,
    agent: &str,
    device: &str,
    since: i64,
    until: i64,
) -> Result<Vec<(i64, f64)>> {
    let mut stream = q
        .range(pb::RangeRequest {
            filter: Some(pb::SeriesFilter {
                agent: agent.into(),
                device: device.into(),
                metric: String::new(),
            }),
            since_ns: since,
            until_ns: until,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if chunk.series.as_ref().map(|s| s.id) != Some(id) {
            continue;
        }
        for p in chunk.points {
            let v = match p.value {
                Some(pb::point::Value::I64(v)) => v as f64,
                Some(pb::point::Value::F64(v)) => v,
                Some(pb::point::Value::Bool(v)) => f64::from(u8::from(v)),
                _ => continue,
            };
            out.push((p.ts_ns, v));
        }
    }
    if out.is_empty() {
        bail!("Range has no points of series {id}");
    }
    Ok(out)
}
