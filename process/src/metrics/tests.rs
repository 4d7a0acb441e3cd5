use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::process::{ProcessStats, boot_time, max_open_files, parse_stat, status_kb};
use super::*;

/// What Prometheus 2.42 sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[test]
fn the_format_follows_accept() {
    assert_eq!(Format::from_accept(None), Format::Text);
    assert_eq!(
        Format::from_accept(Some(PROMETHEUS_ACCEPT)),
        Format::OpenMetrics
    );
    assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
    assert_eq!(
        Format::from_accept(Some("text/plain;version=0.0.4")),
        Format::Text
    );
    assert_eq!(
        Format::from_accept(Some("Application/OpenMetrics-Text")),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-text;q=0, text/plain")),
        Format::Text
    );
    assert_eq!(
        Format::from_accept(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
        Format::Text
    );
}

#[test]
fn proc_files_are_parsed() {
    // A command name with spaces and parentheses, as proc(5) allows.
    let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 125 0 0 20 0 3 0 9000 12345678 900 18446744073709551615";
    let (cpu, start) = parse_stat(stat).expect("parses");
    assert!((cpu - 3.75).abs() < 1e-9, "{cpu}");
    assert_eq!(start, 9000.0);
    assert_eq!(parse_stat("no parenthesis"), None);
    assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\n"), Some(1.7e9));
    let status = "Name:\tx\nVmSize:\t  10240 kB\nVmRSS:\t    2048 kB\n";
    assert_eq!(status_kb(status, "VmRSS:"), Some(2048.0));
    assert_eq!(status_kb(status, "VmSize:"), Some(10240.0));
    let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 1048576              files\n";
    assert_eq!(max_open_files(limits), Some(1024));
    assert_eq!(
        max_open_files(
            "Max open files            unlimited            unlimited            files\n"
        ),
        None
    );
}

#[test]
fn this_process_is_read() {
    let s = ProcessStats::read();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let start = s.start_time_seconds.expect("start time");
    assert!(
        start <= now + 1.0 && start > now - 86_400.0,
        "{start} vs {now}"
    );
    assert!(s.resident_bytes.expect("rss") > 0.0);
    assert!(s.virtual_bytes.expect("vsize") >= s.resident_bytes.expect("rss"));
    assert!(s.open_fds.expect("fds") >= 3);
    assert!(s.cpu_seconds.expect("cpu") >= 0.0);
}

#[test]
fn a_histogram_counts_each_observation_once() {
    let h = Histogram::new(&[0.1, 1.0, 0.5, f64::INFINITY]);
    for v in [0.05, 0.1, 0.2, 0.5, 0.7, 3.0] {
        h.observe(v);
    }
    h.observe_duration(Duration::from_millis(1500));
    assert_eq!(h.count(), 7);
    assert!((h.sum() - 6.05).abs() < 1e-6, "{}", h.sum());
    let mut registry = Registry::default();
    registry.register("t", "test", h.clone());
    let text = encode(&registry, Format::Text).expect("encodes");
    // Cumulative, `le` inclusive: 0.1 holds 0.05 and 0.1.
    for line in [
        "t_bucket{le=\"0.1\"} 2",
        "t_bucket{le=\"0.5\"} 4",
        "t_bucket{le=\"1\"} 5",
        "t_bucket{le=\"+Inf\"} 7",
        "t_count 7",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
}

fn sample_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    register_build_info(&mut registry, "tributary_test", "1.2.3", "abc123");
    registry
}

#[test]
fn both_formats_carry_the_standard_names() {
    let registry = sample_registry();
    let text = encode(&registry, Format::Text).expect("encodes");
    let om = encode(&registry, Format::OpenMetrics).expect("encodes");
    for body in [&text, &om] {
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "tributary_test_build_info{version=\"1.2.3\",commit=\"abc123\"} 1",
        ] {
            assert!(body.contains(name), "{name} missing in:\n{body}");
        }
    }
    assert!(om.ends_with("# EOF\n"));
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    assert!(text.contains("# TYPE tributary_test_build_info gauge"));
}

/// Sends `request` on a new connection and reads until the server closes.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn start(limits: ServeLimits) -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let router = routes(Arc::new(sample_registry()));
    tokio::spawn(serve(listener, router, limits, shutdown.clone()));
    (addr, shutdown)
}

#[tokio::test]
async fn metrics_are_served_and_other_paths_are_not_found() {
    let (addr, shutdown) = start(ServeLimits::default()).await;
    let text = exchange(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("content-type: {TEXT_CONTENT_TYPE}")),
        "{text}"
    );
    assert!(text.contains("process_open_fds "));
    let om = exchange(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        om.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
        "{om}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    for path in ["/", "/metrics/x", "/nope"] {
        let r = exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (addr, shutdown) = start(ServeLimits {
        header_read_timeout: Duration::from_millis(200),
        ..ServeLimits::default()
    })
    .await;
    // Half a request line, then silence: the server closes the connection
    // (a 408 or nothing), it never answers 200.
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        exchange(addr, "GET /metrics HTTP/1.1\r\nHo"),
    )
    .await
    .expect("the server closed the connection");
    assert!(!got.contains("200 OK"), "{got}");
    shutdown.cancel();
}

/// `observe_duration` finds buckets on integer nanoseconds: the same
/// buckets as `observe` of the same value in seconds, bounds included.
#[test]
fn durations_land_in_the_buckets_of_their_seconds() {
    let by_duration = Histogram::durations();
    let by_seconds = Histogram::durations();
    let mut values: Vec<Duration> = super::DURATION_BUCKETS
        .iter()
        .flat_map(|b| {
            let d = Duration::from_secs_f64(*b);
            [
                d,
                d + Duration::from_nanos(1),
                d.saturating_sub(Duration::from_nanos(1)),
            ]
        })
        .collect();
    values.extend([Duration::ZERO, Duration::from_secs(3600), Duration::MAX]);
    for d in values {
        by_duration.observe_duration(d);
        by_seconds.observe(d.as_secs_f64());
    }
    let scrape = |h: &Histogram| {
        let mut registry = Registry::default();
        registry.register("t", "test", h.clone());
        let text = encode(&registry, Format::Text).expect("encodes");
        text.lines()
            .filter(|l| l.starts_with("t_bucket"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(scrape(&by_duration), scrape(&by_seconds));
}
