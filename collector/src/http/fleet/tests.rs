#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::api::{RangeRequest, range_params};
use super::assets::{ASSETS, CONTENT_SECURITY_POLICY};
use super::devices::{Health, health, updates};
use super::thin::Thinner;
use crate::http::{HttpContext, router};
use crate::model::{CommittedChunk, LiveAgents, Point, SeriesKey, SeriesMeta, StoredValue};
use crate::store::read::Reader;

fn point(ts_ns: i64, value: StoredValue) -> Point {
    Point {
        ts_ns,
        received_ns: ts_ns,
        value,
    }
}

fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_page_weighs_under_300_kb() {
    let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
    assert!(total < 300 * 1024, "the page's files weigh {total} bytes");
    // Every file the page names is embedded.
    let index = ASSETS.iter().find(|a| a.name == "index.html").unwrap();
    let html = std::str::from_utf8(index.body).unwrap();
    for asset in ASSETS.iter().filter(|a| a.name != "index.html") {
        let named = ASSETS.iter().any(|other| {
            std::str::from_utf8(other.body)
                .unwrap()
                .contains(&format!("/{}", asset.name))
        });
        assert!(named, "{} is embedded but nothing loads it", asset.name);
    }
    // No inline script (the policy would refuse it) and nothing remote.
    assert!(!html.contains("<script>") && !html.contains("http://") && !html.contains("//cdn"));
}

#[test]
fn a_device_is_up_after_a_good_poll() {
    let up = point(10, StoredValue::I64(1));
    let h = health(Some(&up), []);
    assert_eq!(
        h,
        Health {
            up: Some(true),
            last_poll_ns: Some("10".into()),
            outcome: "ok",
            cause: None,
        }
    );
}

#[test]
fn a_down_device_shows_the_cause_of_that_poll() {
    let up = point(20, StoredValue::I64(0));
    let older = point(10, StoredValue::Error("old".into()));
    let same = point(20, StoredValue::Timeout("timeout after 1s".into()));
    let value = point(20, StoredValue::F64(1.0));
    let h = health(Some(&up), [&older, &value, &same]);
    assert_eq!(h.up, Some(false));
    assert_eq!(h.outcome, "timeout");
    assert_eq!(h.cause.as_deref(), Some("timeout after 1s"));
    // Down, and no failed reading of that poll: an error without a cause.
    let h = health(Some(&up), [&older]);
    assert_eq!((h.outcome, h.cause), ("error", None));
    // No `up` series at all: the newest failure tells.
    let h = health(None, [&older]);
    assert_eq!((h.up, h.outcome), (None, "error"));
    assert_eq!(health(None, []).outcome, "unknown");
}

#[test]
fn a_commit_updates_the_devices_it_tells_about() {
    let meta = |device: &str, metric: &str| {
        Arc::new(SeriesMeta {
            id: 1,
            key: SeriesKey {
                agent: "a".into(),
                device: device.into(),
                metric: metric.into(),
                labels: BTreeMap::new(),
                unit: String::new(),
            },
        })
    };
    let commit = vec![
        CommittedChunk {
            series: meta("<b>x</b>", "up"),
            points: vec![point(1, StoredValue::I64(1)), point(2, StoredValue::I64(0))],
        },
        CommittedChunk {
            series: meta("<b>x</b>", "power"),
            points: vec![point(2, StoredValue::Error("refused".into()))],
        },
        // A plain value tells nothing about health.
        CommittedChunk {
            series: meta("quiet", "power"),
            points: vec![point(2, StoredValue::F64(3.0))],
        },
    ];
    let got = updates(&commit);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].device, "<b>x</b>");
    assert_eq!(got[0].health.up, Some(false));
    assert_eq!(got[0].health.cause.as_deref(), Some("refused"));
    assert_eq!(got[0].health.last_poll_ns.as_deref(), Some("2"));
}

#[test]
fn a_window_with_few_points_is_kept_whole_and_a_large_one_keeps_its_extremes() {
    let mut t = Thinner::new(0, 1000, 10);
    for i in 0..10 {
        t.push(&point(i, StoredValue::I64(i)));
    }
    let (points, total, thinned) = t.finish();
    assert_eq!((points.len(), total, thinned), (10, 10, false));

    let mut t = Thinner::new(0, 1000, 10);
    for i in 0..1000 {
        // One spike, which must survive thinning.
        let v = if i == 517 { 1_000_000 } else { i % 7 };
        t.push(&point(i, StoredValue::I64(v)));
    }
    let (points, total, thinned) = t.finish();
    assert!(thinned && total == 1000 && points.len() <= 10, "{points:?}");
    assert!(
        points
            .iter()
            .any(|p| p.value == StoredValue::I64(1_000_000))
    );
    assert!(points.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
}

#[test]
fn range_parameters_are_checked_by_name() {
    let err = |pairs: &[(&str, &str)]| range_params(query(pairs)).unwrap_err().0;
    assert!(err(&[]).starts_with("series:"));
    assert!(err(&[("series", "abc")]).starts_with("series:"));
    assert!(err(&[("series", "-3")]).starts_with("series:"));
    assert!(err(&[("series", "1"), ("window", "soon")]).starts_with("window:"));
    assert!(err(&[("series", "1"), ("window", "400d")]).starts_with("window:"));
    assert!(err(&[("series", "1"), ("until_ns", "x")]).starts_with("until_ns:"));
    assert!(err(&[("series", "1"), ("since_ns", "5"), ("until_ns", "4")]).starts_with("until_ns:"));
    assert!(err(&[("series", "1"), ("since_ns", "5"), ("window", "1m")]).contains("not both"));
    assert!(err(&[("series", "1"), ("colour", "red")]).contains("\"colour\""));
    let ok = range_params(query(&[
        ("series", "7"),
        ("until_ns", "1000"),
        ("window", "1us"),
    ]));
    assert_eq!(
        ok.unwrap(),
        RangeRequest {
            id: 7,
            since_ns: 0,
            until_ns: 1000
        }
    );
}

/// A context on a store that cannot be opened, and the sender of its live
/// agents (an event stream ends when that is dropped).
fn context() -> (HttpContext, watch::Sender<LiveAgents>) {
    let (live_tx, live) = watch::channel(LiveAgents::default());
    let (tail, _) = broadcast::channel(4);
    let ctx = HttpContext {
        reader: Reader::Sqlite(crate::store::sqlite::SqliteReader::new("/nonexistent")),
        query_reader: Reader::Sqlite(crate::store::sqlite::SqliteReader::new("/nonexistent")),
        live,
        tail,
        roles: Arc::default(),
        mutual_tls: false,
        shutdown: CancellationToken::new(),
        metrics: Arc::default(),
        query_limits: crate::promql::Limits::default(),
        http_metrics: Arc::default(),
        exports: None,
    };
    (ctx, live_tx)
}

async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = router(context().0)
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_a_strict_policy() {
    let (status, headers, body) = get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Tributary fleet"));
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        CONTENT_SECURITY_POLICY
    );
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    for asset in ASSETS.iter().filter(|a| a.name != "index.html") {
        let (status, headers, body) = get(&format!("/assets/{}", asset.name)).await;
        assert_eq!(status, StatusCode::OK, "{}", asset.name);
        assert_eq!(headers[header::CONTENT_TYPE], asset.content_type);
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(body.len(), asset.body.len());
    }
}

#[tokio::test]
async fn unknown_paths_and_bad_parameters_are_refused_with_their_name() {
    for path in [
        "/assets/nope.js",
        "/assets/index.html",
        "/index.html",
        "/api/fleet/nope",
    ] {
        let (status, _, body) = get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _, body) = get("/api/fleet/range?series=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("series:"), "{body}");
    let (status, _, body) = get("/api/fleet/events?series=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("series:"), "{body}");
    let (status, _, body) = get("/api/fleet/series?agent=a").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("device"), "{body}");
    let (status, _, body) = get("/api/fleet?x=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("\"x\""), "{body}");
    // A store that cannot be opened is a 503 naming what failed.
    let (status, _, body) = get("/api/fleet").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.starts_with("list agents:"), "{body}");
}

#[tokio::test]
async fn events_carry_health_and_points_and_end_at_shutdown() {
    use tokio_stream::StreamExt as _;

    let (ctx, _live_tx) = context();
    let (tail, shutdown) = (ctx.tail.clone(), ctx.shutdown.clone());
    let response = router(ctx)
        .oneshot(
            Request::get("/api/fleet/events?series=7")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    let mut read_until = async |text: &mut String, want: &str| {
        while !text.contains(want) {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until(&mut text, "event: hello").await;
    let series = |id, metric: &str| {
        Arc::new(SeriesMeta {
            id,
            key: SeriesKey {
                agent: "a".into(),
                device: "<i>d</i>".into(),
                metric: metric.into(),
                labels: BTreeMap::new(),
                unit: String::new(),
            },
        })
    };
    tail.send(Arc::new(vec![
        CommittedChunk {
            series: series(7, "up"),
            points: vec![point(5, StoredValue::I64(0))],
        },
        CommittedChunk {
            series: series(8, "power"),
            points: vec![point(5, StoredValue::Timeout("timeout after 1s".into()))],
        },
    ]))
    .unwrap();
    read_until(&mut text, "event: points").await;
    assert!(
        text.contains(r#"data: [{"agent":"a","device":"<i>d</i>","up":false,"last_poll_ns":"5","outcome":"timeout","cause":"timeout after 1s"}]"#),
        "{text}"
    );
    assert!(
        text.contains(r#"data: {"series":7,"points":[{"t":"5","v":0}]}"#),
        "{text}"
    );
    // The stream ends when the collector shuts down.
    shutdown.cancel();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the event stream outlived the shutdown");
}

/// Two slots: a third stream is refused with 503 and a body that says why;
/// once a client goes, its slot takes a new one.
#[tokio::test]
async fn event_streams_are_capped() {
    use tokio_stream::StreamExt as _;

    let (ctx, _live_tx) = context();
    let counted = ctx.http_metrics.clone();
    let app = super::routes_with(2, super::STREAM_LIFETIME).with_state(ctx);
    let open = async |app: &axum::Router| {
        app.clone()
            .oneshot(
                Request::get("/api/fleet/events")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    };
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = open(&app).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body().into_data_stream();
        let hello = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&hello).contains("event: hello"));
        streams.push(body);
    }
    let refused = open(&app).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "10");
    let why = axum::body::to_bytes(refused.into_body(), 4096)
        .await
        .unwrap();
    let why = String::from_utf8_lossy(&why);
    assert!(
        why.contains("too many live event streams") && why.contains("at most 2 at once"),
        "{why}"
    );
    assert_eq!(
        counted.refusals(crate::metrics::HttpRefusal::EventStreamsFull),
        1
    );
    // One client goes: its feed notices and gives the slot back.
    drop(streams.pop());
    let admitted = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let response = open(&app).await;
            if response.status() == StatusCode::OK {
                return response;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slot of the client that went was never freed");
    drop(admitted);
}

/// A stream ends itself after its lifetime, with the collector still up
/// (the browser reconnects), and gives its slot back.
#[tokio::test]
async fn an_event_stream_ends_after_its_lifetime() {
    use tokio_stream::StreamExt as _;

    let (ctx, _live_tx) = context();
    let app = super::routes_with(1, std::time::Duration::from_millis(300)).with_state(ctx);
    let open = async |app: &axum::Router| {
        app.clone()
            .oneshot(
                Request::get("/api/fleet/events")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    };
    let response = open(&app).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let mut got = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            got.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await
    .expect("the event stream outlived its lifetime");
    assert!(got.contains("event: hello"), "{got}");
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let response = open(&app).await;
            if response.status() == StatusCode::OK {
                return response;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slot of the ended stream was never freed");
    drop(again);
}
