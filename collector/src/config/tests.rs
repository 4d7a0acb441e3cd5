//! Tests of `serve`'s settings: values, defaults, flags over the file, and
//! every error at its file, line and key.

use super::*;

fn resolve_str(text: &str) -> Result<Serve, ConfigError> {
    resolve_text(
        text,
        Path::new("/etc/tributary/collector.toml"),
        &Flags::default(),
    )
}

fn error(text: &str) -> String {
    match resolve_str(text) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let s = resolve_str("").expect("valid");
    assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(s.server.sqlite_path, PathBuf::from("tributary.db"));
    assert!(s.server.tls.is_none());
    assert!(s.warnings.is_empty());
}

#[test]
fn values_are_read_and_paths_are_relative_to_the_file() {
    let s = resolve_str(
        "listen = \"127.0.0.2:7000\"\nstore = \"sqlite:data/t.db\"\nsynchronous = \"normal\"\n\
         allowed_agents = [\"edge-1\"]\n[limits]\nmax_connections = 3\nhandshake_timeout = \"2s\"\n\
         max_clock_skew = \"1m\"\n",
    )
    .expect("valid");
    assert_eq!(s.listen.to_string(), "127.0.0.2:7000");
    assert_eq!(
        s.server.sqlite_path,
        PathBuf::from("/etc/tributary/data/t.db")
    );
    assert_eq!(s.server.durability, Durability::Normal);
    assert_eq!(s.server.max_connections, 3);
    assert_eq!(s.server.handshake_timeout, Duration::from_secs(2));
    assert_eq!(s.server.limits.max_clock_skew, Duration::from_secs(60));
    let allowed = s.server.roles.allowed_agents.clone().expect("allowlist");
    assert!(allowed.contains("edge-1"));
}

#[test]
fn postgres_store_and_retention_from_the_file() {
    let s = resolve_text(
        "store = \"postgres://root@127.0.0.1/test\"\nretention = \"30d\"\n",
        Path::new("c.toml"),
        &Flags::default(),
    )
    .expect("valid");
    assert!(matches!(s.server.store, Some(StoreUrl::Postgres(_))));
    assert!(s.server.retention.is_some());
    let e = resolve_text(
        "retention = \"forever\"\n",
        Path::new("c.toml"),
        &Flags::default(),
    )
    .expect_err("bad retention");
    assert!(e.to_string().contains("c.toml:1: retention"), "{e}");
    let e = resolve_text(
        "store = \"mysql://x\"\n",
        Path::new("c.toml"),
        &Flags::default(),
    )
    .expect_err("bad store");
    assert!(e.to_string().contains("c.toml:1: store"), "{e}");
}

#[test]
fn flags_win_over_the_file() {
    let flags = Flags {
        listen: Some("127.0.0.1:9999".parse().expect("addr")),
        http_listen: None,
        store: Some("sqlite:/tmp/x.db".into()),
        synchronous: Some(Durability::Full),
        retention: None,
        allow_plaintext: false,
        allow_unauthenticated_agents: false,
        ..Flags::default()
    };
    let s = resolve_text(
        "listen = \"127.0.0.2:7000\"\nsynchronous = \"normal\"\n",
        Path::new("c.toml"),
        &flags,
    )
    .expect("valid");
    assert_eq!(s.listen.to_string(), "127.0.0.1:9999");
    assert_eq!(s.server.sqlite_path, PathBuf::from("/tmp/x.db"));
    assert_eq!(s.server.durability, Durability::Full);
}

#[test]
fn errors_name_file_line_and_key() {
    assert_eq!(
        error("\n\nlisten = \"nowhere\"\n"),
        "/etc/tributary/collector.toml:3: listen: \"nowhere\": invalid socket address syntax \
         (expected e.g. 0.0.0.0:7400)"
    );
    let e = error("[limits]\nmax_conections = 3\n");
    assert!(
        e.starts_with("/etc/tributary/collector.toml:2: limits: unknown key `max_conections`"),
        "{e}"
    );
    let e = error("[limits]\nmax_connections = 0\n");
    assert!(
        e.starts_with("/etc/tributary/collector.toml:2: limits.max_connections: 0: expected"),
        "{e}"
    );
    let e = error("[limits]\nkeepalive_interval = \"10 parsecs\"\n");
    assert!(
        e.starts_with(
            "/etc/tributary/collector.toml:2: limits.keepalive_interval: invalid duration"
        ),
        "{e}"
    );
    let e = error("allowed_agents = [\"ok\", \"not ok\"]\n");
    assert!(
        e.starts_with("/etc/tributary/collector.toml:1: allowed_agents[1]: \"not ok\""),
        "{e}"
    );
    let e = error("[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n");
    assert!(
        e.starts_with(
            "/etc/tributary/collector.toml:2: tls.cert: /etc/tributary/missing.pem: cannot read"
        ),
        "{e}"
    );
    let e = error("synchronous = \"sometimes\"\n");
    assert!(
        e.starts_with("/etc/tributary/collector.toml:1: synchronous: unknown durability"),
        "{e}"
    );
    let e = error("listen = [\n");
    assert!(e.starts_with("/etc/tributary/collector.toml:"), "{e}");
    assert!(e.contains("invalid toml"), "{e}");
}

#[test]
fn plaintext_off_loopback_needs_an_explicit_yes() {
    let e = error("listen = \"0.0.0.0:7400\"\n");
    assert!(
        e.starts_with(
            "/etc/tributary/collector.toml:1: listen: 0.0.0.0:7400 is not a loopback address"
        ),
        "{e}"
    );
    let s = resolve_str("listen = \"0.0.0.0:7400\"\nallow_plaintext = true\n").expect("valid");
    assert_eq!(s.warnings.len(), 1);
    let flags = Flags {
        listen: Some("[::]:7400".parse().expect("addr")),
        ..Flags::default()
    };
    let e = resolve(None, &flags)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("--listen: [::]:7400 is not a loopback address"),
        "{e}"
    );
    let s = resolve_str("listen = \"[::1]:7400\"\n").expect("valid");
    assert!(s.warnings.is_empty());
}

#[test]
fn max_of_finds_the_type_bound() {
    assert_eq!(super::limits::max_of::<u32>(), u64::from(u32::MAX));
    assert_eq!(super::limits::max_of::<u64>(), u64::MAX);
}

#[test]
fn durations_are_bounded() {
    assert_eq!(
        error("[limits]\nhello_timeout = \"500000000000y\"\n"),
        "/etc/tributary/collector.toml:2: limits.hello_timeout: invalid duration \
         \"500000000000y\": longer than the limit of 100years"
    );
    let e = error("retention = \"200y\"\n");
    assert!(
        e.starts_with(
            "/etc/tributary/collector.toml:1: retention: invalid duration \"200y\": longer"
        ),
        "{e}"
    );
}

#[test]
fn an_unknown_key_lists_the_keys_of_its_table() {
    assert_eq!(
        error("[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"x\"\n"),
        "/etc/tributary/collector.toml:4: tls: unknown key `ca` (expected one of `cert`, `key`, \
         `client_ca`, `query_requires_client_cert`)"
    );
    let e = error("listen = \"127.0.0.1:1\"\nport = 3\n");
    assert!(
        e.starts_with(
            "/etc/tributary/collector.toml:2: unknown key `port` (expected one of `listen`, "
        ),
        "{e}"
    );
}

#[test]
fn connection_deadlines_and_the_per_address_cap() {
    let s = resolve_str("").expect("valid");
    assert_eq!(s.server.max_connections_per_address, None);
    assert_eq!(s.server.preface_timeout, Duration::from_secs(10));
    assert_eq!(s.server.idle_timeout, Duration::from_secs(300));
    let s = resolve_str(
        "[limits]\nmax_connections_per_address = 5\npreface_timeout = \"1s\"\n\
         idle_timeout = \"3s\"\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n",
    )
    .expect("valid");
    assert_eq!(s.server.max_connections_per_address, Some(5));
    assert_eq!(s.server.preface_timeout, Duration::from_secs(1));
    assert_eq!(s.server.idle_timeout, Duration::from_secs(3));
    assert_eq!(
        error("[limits]\nmax_connections_per_address = 0\n"),
        "/etc/tributary/collector.toml:2: limits.max_connections_per_address: 0: expected a \
         whole number from 1 to 18446744073709551615"
    );
    // A live peer that only answers pings must not look idle.
    assert_eq!(
        error("[limits]\nidle_timeout = \"15s\"\n"),
        "/etc/tributary/collector.toml:2: limits.idle_timeout: idle_timeout (15s) must be \
         longer than keepalive_interval + keepalive_timeout (20s), or healthy connections \
         that only answer pings are closed"
    );
    assert!(
        error("[limits]\nkeepalive_interval = \"10m\"\n").starts_with(
            "/etc/tributary/collector.toml:2: limits.keepalive_interval: idle_timeout (5m)"
        ),
    );
}

/// A directory holding `c.pem`, `k.pem` and `ca.pem` (a self-signed
/// certificate, its key, and the same certificate as the client CA: the
/// config builds the server's TLS configuration, so they must be real), and
/// the path of a config file in it.
fn tls_dir(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tributary-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    for (file, pem) in [
        ("c.pem", cert.pem()),
        ("ca.pem", cert.pem()),
        ("k.pem", signing_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(file), pem).expect("write pem");
    }
    let config = dir.join("collector.toml");
    (dir, config)
}

const SERVER_TLS: &str = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";

#[test]
fn tls_without_client_ca_off_loopback_needs_an_explicit_yes() {
    let (dir, path) = tls_dir("no-client-ca");
    let text = format!("listen = \"0.0.0.0:7400\"\n{SERVER_TLS}");
    let e = resolve_text(&text, &path, &Flags::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        e,
        format!(
            "{}:1: listen: 0.0.0.0:7400 is not a loopback address and [tls] has no client_ca, \
             so any client could stream as any agent id: set tls.client_ca (see README \
             \"Mutual TLS\"), or allow it explicitly with allow_unauthenticated_agents = true \
             or --allow-unauthenticated-agents",
            path.display()
        )
    );
    let warning = "serving TLS without client_ca on 0.0.0.0:7400: agent ids are not \
                   authenticated, any client may stream as any agent id";
    let by_key = format!("allow_unauthenticated_agents = true\n{text}");
    let s = resolve_text(&by_key, &path, &Flags::default()).expect("allowed by the key");
    assert_eq!(s.warnings, [warning]);
    let flags = Flags {
        allow_unauthenticated_agents: true,
        ..Flags::default()
    };
    let s = resolve_text(&text, &path, &flags).expect("allowed by the flag");
    assert_eq!(s.warnings, [warning]);
    // On loopback, or with client_ca, there is nothing to allow.
    let s = resolve_text(
        &format!("listen = \"127.0.0.1:7400\"\n{SERVER_TLS}"),
        &path,
        &Flags::default(),
    )
    .expect("loopback");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let mtls = format!("{text}client_ca = \"ca.pem\"\n");
    let s = resolve_text(&mtls, &path, &Flags::default()).expect("mutual TLS");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn operators_default_to_the_operator_certificate_and_are_checked() {
    let s = resolve_str("").expect("valid");
    assert_eq!(
        s.server.roles.operators.iter().collect::<Vec<_>>(),
        ["operator"]
    );
    let s = resolve_str("operators = [\"ops-1\", \"ops-2\"]\n").expect("valid");
    assert!(s.server.roles.is_operator("ops-2"));
    assert!(!s.server.roles.is_operator("operator"));
    // An empty list closes Query to every certificate.
    let s = resolve_str("operators = []\n").expect("valid");
    assert!(s.server.roles.operators.is_empty());
    assert_eq!(
        error("operators = [\"ops 1\"]\n"),
        "/etc/tributary/collector.toml:1: operators[0]: \"ops 1\": an identity has 1 to 256 \
         letters, digits, '.', '_' and '-'"
    );
    assert_eq!(
        error("allowed_agents = [\"edge-1\", \"ops\"]\noperators = [\"ops\"]\n"),
        "/etc/tributary/collector.toml:1: allowed_agents[1]: \"ops\" is also an operator \
         (`operators`, by default [\"operator\"]): an identity is an operator (Query) or an \
         agent (Ingest), not both"
    );
    let e = error("allowed_agents = [\"operator\"]\n");
    assert!(
        e.starts_with("/etc/tributary/collector.toml:1: allowed_agents[0]: \"operator\" is also"),
        "{e}"
    );
    resolve_str("allowed_agents = [\"operator\"]\noperators = [\"ops\"]\n").expect("valid");
}

#[test]
fn query_without_client_certificates_is_warned_about() {
    let (dir, path) = tls_dir("optional-client-cert");
    let text = format!("{SERVER_TLS}client_ca = \"ca.pem\"\nquery_requires_client_cert = false\n");
    let s = resolve_text(&text, &path, &Flags::default()).expect("valid");
    assert_eq!(
        s.warnings,
        [
            "query_requires_client_cert = false: connections without a client certificate may \
          call Query and read every agent's data"
        ]
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn http_listen_defaults_to_loopback_and_turns_off() {
    let s = resolve(None, &Flags::default()).expect("defaults");
    assert_eq!(
        s.http_listen,
        Some("127.0.0.1:7401".parse().expect("addr")),
        "the default"
    );
    let s = resolve_str("http_listen = \"off\"\n").expect("off");
    assert_eq!(s.http_listen, None);
    let s = resolve_str("http_listen = \"127.0.0.1:9100\"\n").expect("an address");
    assert_eq!(s.http_listen, Some("127.0.0.1:9100".parse().expect("addr")));
    let flags = Flags {
        http_listen: Some(None),
        ..Flags::default()
    };
    let s = resolve_text(
        "http_listen = \"127.0.0.1:9100\"\n",
        Path::new("c.toml"),
        &flags,
    )
    .expect("the flag wins");
    assert_eq!(s.http_listen, None);
    let e = resolve_str("http_listen = \"localhost:80\"\n")
        .expect_err("not an address")
        .to_string();
    assert!(
        e.contains("collector.toml:1") && e.contains("http_listen") && e.contains("off"),
        "{e}"
    );
}

#[test]
fn plaintext_http_off_loopback_needs_allow_plaintext() {
    let e = resolve_str("http_listen = \"0.0.0.0:7401\"\n")
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("http_listen")
            && e.contains("not a loopback address")
            && e.contains("allow_plaintext"),
        "{e}"
    );
    let s =
        resolve_str("http_listen = \"0.0.0.0:7401\"\nallow_plaintext = true\n").expect("allowed");
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("plaintext HTTP on 0.0.0.0:7401")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn the_store_password_comes_from_a_file() {
    let dir = std::env::temp_dir().join(format!("tributary-store-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("pw"), "p@ss w:rd\n").expect("pw");
    let origin = dir.join("c.toml");
    let s = resolve_text(
        "store = \"postgres://tributary@db.example:5432/metrics\"\nstore_password_file = \"pw\"\n",
        &origin,
        &Flags::default(),
    )
    .expect("valid");
    let Some(StoreUrl::Postgres(url)) = &s.server.store else {
        panic!("a postgres store");
    };
    assert_eq!(
        url,
        "postgres://tributary:p%40ss%20w%3Ard@db.example:5432/metrics"
    );
    // Printing the store hides the password.
    assert!(!format!("{:?}", s.server.store).contains("p%40ss"));
    let e = resolve_text(
        "store = \"postgres://tributary:x@db/metrics\"\nstore_password_file = \"pw\"\n",
        &origin,
        &Flags::default(),
    )
    .expect_err("a password twice");
    assert!(
        e.to_string().starts_with(&format!(
            "{}:2: store_password_file: the store URL has a password already",
            origin.display()
        )),
        "{e}"
    );
    assert!(!e.to_string().contains("p@ss"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exports_are_read_with_defaults_and_secrets_from_files() {
    let dir = std::env::temp_dir().join(format!("tributary-exports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("token"), "s3cret\n").expect("token");
    let s = resolve_text(
        "[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\n\
         url = \"http://127.0.0.1:8428/api/v1/write\"\nbearer_token_file = \"token\"\n\
         headers = { X-Scope-OrgID = \"a\" }\nmatch = { agent = \"edge-*\" }\n\
         [[exports]]\nname = \"b\"\nkind = \"remote_write\"\nurl = \"https://vm:8428/w\"\n\
         shards = 2\nmax_lag = \"1h\"\nbasic_auth = { username = \"u\", password = \"p\" }\n",
        &dir.join("collector.toml"),
        &Flags::default(),
    )
    .expect("valid");
    let _ = std::fs::remove_dir_all(&dir);
    let e = &s.server.exports;
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].name, "vm");
    let crate::config::exports::ExportKind::RemoteWrite(rw) = &e[0].kind else {
        panic!("not remote_write: {:?}", e[0].kind)
    };
    assert_eq!(
        rw.auth,
        crate::config::exports::Auth::Bearer("s3cret".into())
    );
    assert_eq!(rw.headers, vec![("X-Scope-OrgID".into(), "a".into())]);
    assert_eq!(rw.shards, 4);
    assert!(e[0].filter.matches("edge-1", "d", "m"));
    assert!(!e[0].filter.matches("core-1", "d", "m"));
    assert_eq!(e[0].max_lag, None);
    assert_eq!(e[1].max_lag, Some(Duration::from_secs(3600)));
    let crate::config::exports::ExportKind::RemoteWrite(rw) = &e[1].kind else {
        panic!("not remote_write: {:?}", e[1].kind)
    };
    assert_eq!(rw.shards, 2);
    assert!(format!("{:?}", rw.auth).contains("<secret>"));
    assert!(!format!("{:?}", rw.auth).contains("\"p\""));
}

#[test]
fn export_errors_name_the_line_and_key() {
    let head = "[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\n";
    let cases = [
        (
            format!("{head}url = \"ftp://x\"\n"),
            "collector.toml:4: exports[0].url: \"ftp://x\": expected an http:// or https:// URL",
        ),
        (
            "[[exports]]\nname = \"a b\"\nkind = \"remote_write\"\nurl = \"http://x/w\"\n".into(),
            "collector.toml:2: exports[0].name: \"a b\": a name has 1 to 64",
        ),
        (
            "[[exports]]\nname = \"vm\"\nkind = \"kafka\"\nurl = \"http://x/w\"\n".into(),
            "collector.toml:3: exports[0].kind: \"kafka\": expected \"remote_write\" or \"nats\"",
        ),
        (
            format!("{head}url = \"http://x/w\"\nshards = 0\n"),
            "collector.toml:5: exports[0].shards: 0: expected a whole number from 1 to 64",
        ),
        (
            format!("{head}url = \"http://x/w\"\ntimeout = \"0s\"\n"),
            "collector.toml:5: exports[0].timeout: must be longer than zero",
        ),
        (
            format!("{head}url = \"http://x/w\"\nheaders = {{ Content-Type = \"x\" }}\n"),
            "collector.toml:5: exports[0].headers.Content-Type: set by the remote write protocol",
        ),
        (
            format!("{head}url = \"http://x/w\"\nbearer_token_file = \"missing-token\"\n"),
            "collector.toml:5: exports[0].bearer_token_file: /etc/tributary/missing-token:",
        ),
        (
            format!(
                "{head}url = \"http://x/w\"\nbearer_token = \"t\"\nbearer_token_file = \"f\"\n"
            ),
            "collector.toml:5: exports[0].bearer_token: set bearer_token or bearer_token_file, not both",
        ),
        (
            format!("{head}url = \"http://x/w\"\n[exports.tls]\nca = \"ca.pem\"\n"),
            "exports[0].tls: the url is http://",
        ),
        (
            format!("{head}url = \"http://x/w\"\nbogus = 1\n"),
            "collector.toml:5: exports[0]: unknown key `bogus`",
        ),
        (
            format!(
                "{head}url = \"http://x/w\"\n[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\nurl = \"http://y/w\"\n"
            ),
            "collector.toml:6: exports[1].name: \"vm\" is used by an earlier export",
        ),
    ];
    for (text, want) in cases {
        let got = error(&text);
        assert!(got.contains(want), "{text:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn the_query_table_and_flags_set_the_promql_limits() {
    let defaults = resolve_str("").expect("no [query]");
    assert_eq!(
        defaults.server.query_limits,
        crate::promql::Limits::default()
    );
    let s = resolve_str(
        "[query]\nmax_concurrent = 2\nmax_samples = 1000\nmax_points_per_series = 500\n\
         timeout = \"30s\"\nlookback_delta = \"10m\"\n",
    )
    .expect("valid");
    let l = s.server.query_limits;
    assert_eq!(l.max_concurrent, 2);
    assert_eq!(l.max_samples, 1000);
    assert_eq!(l.max_points, 500);
    assert_eq!(l.timeout, std::time::Duration::from_secs(30));
    assert_eq!(l.lookback, std::time::Duration::from_secs(600));
    // A flag wins over the file.
    let flags = Flags {
        query: super::QueryFlags {
            lookback_delta: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        },
        ..Flags::default()
    };
    let s = resolve_text(
        "[query]\nlookback_delta = \"10m\"\n",
        Path::new("c.toml"),
        &flags,
    )
    .expect("valid");
    assert_eq!(
        s.server.query_limits.lookback,
        std::time::Duration::from_secs(60)
    );
    for (text, names) in [
        ("[query]\nmax_samples = 0\n", "c.toml:2: query.max_samples"),
        (
            "[query]\nmax_concurrent = 0\n",
            "c.toml:2: query.max_concurrent",
        ),
        ("[query]\ntimeout = \"0s\"\n", "c.toml:2: query.timeout"),
        (
            "[query]\nlookback_delta = \"soon\"\n",
            "c.toml:2: query.lookback_delta",
        ),
        (
            "[query]\nlookback_delta = \"1000d\"\n",
            "c.toml:2: query.lookback_delta",
        ),
        ("[query]\nmax_points_per_series = -1\n", "c.toml:2"),
        ("[query]\nmax_sample = 5\n", "max_sample"),
    ] {
        let e = resolve_text(text, Path::new("c.toml"), &Flags::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(names), "{text}: {e}");
    }
    let flags = Flags {
        query: super::QueryFlags {
            timeout: Some(std::time::Duration::ZERO),
            ..Default::default()
        },
        ..Flags::default()
    };
    let e = resolve(None, &flags)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.starts_with("--query-timeout"), "{e}");
}

#[test]
fn the_collector_name_comes_from_the_flag_the_file_or_the_host() {
    let s = resolve_str("name = \"collector <1>\"\n").expect("a name");
    assert_eq!(s.server.name, "collector <1>");
    let flags = Flags {
        name: Some("from-flag".into()),
        ..Flags::default()
    };
    let s = resolve_text(
        "name = \"from-file\"\n",
        Path::new("/etc/tributary/collector.toml"),
        &flags,
    )
    .expect("a name");
    assert_eq!(s.server.name, "from-flag");
    // Default: the host name, or the listen address.
    let s = resolve_str("listen = \"127.0.0.1:7411\"\n").expect("defaults");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let expected = if host.is_empty() {
        "127.0.0.1:7411".to_owned()
    } else {
        host
    };
    assert_eq!(s.server.name, expected);

    for (bad, why) in [
        ("name = \"\"\n", "empty"),
        ("name = \"  \"\n", "empty"),
        ("name = \"a\\nb\"\n", "control character"),
        (
            &format!("name = \"{}\"\n", "x".repeat(MAX_NAME_CHARS + 1)) as &str,
            "more than 128",
        ),
    ] {
        let e = error(bad);
        assert!(
            e.contains("collector.toml:1: name") && e.contains(why),
            "{e}"
        );
    }
    let flags = Flags {
        name: Some(String::new()),
        ..Flags::default()
    };
    let Err(e) = resolve(None, &flags) else {
        panic!("an empty --name was taken");
    };
    assert!(e.to_string().contains("--name"), "{e}");
}
