//! Tests of `nats.rs`.

use std::path::Path;
use std::time::Duration;

use super::{NatsAuth, NatsFormat, SubjectTemplate, servers};
use crate::config::exports::ExportKind;
use crate::config::{Flags, resolve_text};

fn resolve(text: &str) -> Result<Vec<super::super::ExportConfig>, String> {
    resolve_text(
        text,
        Path::new("/etc/tributary/collector.toml"),
        &Flags::default(),
    )
    .map(|s| s.server.exports)
    .map_err(|e| e.to_string())
}

#[test]
fn tls_comes_from_the_scheme_or_the_table() {
    let tls_of = |text: &str| {
        let e = resolve(text).unwrap();
        let ExportKind::Nats(n) = &e[0].kind else {
            panic!("not nats: {:?}", e[0].kind)
        };
        n.tls.clone()
    };
    let head = "[[exports]]\nname = \"bus\"\nkind = \"nats\"\nstream = \"T\"\n";
    assert_eq!(tls_of(&format!("{head}url = \"nats://a:1\"\n")), None);
    // tls:// alone: the system's roots, no client certificate.
    let t = tls_of(&format!("{head}url = \"tls://a:1,tls://b\"\n")).unwrap();
    assert_eq!((t.ca, t.identity), (None, None));
    // The table turns TLS on with nats:// too; paths beside the config.
    let t = tls_of(&format!(
        "{head}url = \"nats://a:1\"\n[exports.tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n"
    ))
    .unwrap();
    assert_eq!(t.ca.as_deref(), Some(Path::new("/etc/tributary/ca.pem")));
    assert_eq!(
        t.identity,
        Some(("/etc/tributary/c.pem".into(), "/etc/tributary/c.key".into()))
    );
}

#[test]
fn a_nats_export_is_read_with_its_defaults() {
    let e = resolve(
        "[[exports]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222,nats://h\"\n\
         stream = \"T\"\ncreate_stream = true\nreplicas = 3\nuser = \"u\"\npassword = \"p\"\n\
         format = \"json\"\n",
    )
    .unwrap();
    let ExportKind::Nats(n) = &e[0].kind else {
        panic!("not nats: {:?}", e[0].kind)
    };
    assert_eq!(n.servers, ["127.0.0.1:4222", "h:4222"]);
    assert_eq!(n.subject.text, "tributary.{agent}.{device}");
    assert_eq!(n.format, NatsFormat::Json);
    let spec = n.create_stream.as_ref().unwrap();
    assert_eq!(spec.subjects, ["tributary.*.*"]);
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.duplicate_window, Duration::from_secs(120));
    assert_eq!(spec.max_age, None);
    assert_eq!(
        n.auth,
        NatsAuth::UserPassword {
            user: "u".into(),
            password: "p".into()
        }
    );
    assert!(!format!("{:?}", n.auth).contains("\"p\""));
    assert_eq!(n.max_readings_per_message, 1000);
}

#[test]
fn nkey_seeds_and_creds_files_are_read_checked_and_never_shown() {
    use crate::export::nats::nkey::{KeyKind, KeyPair};
    let dir = std::env::temp_dir().join(format!("tributary-nkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let user = KeyPair::generate(KeyKind::User).unwrap();
    let account = KeyPair::generate(KeyKind::Account).unwrap();
    let seed = user.seed_text();
    std::fs::write(dir.join("user.nk"), format!("{seed}\n")).unwrap();
    std::fs::write(
        dir.join("user.creds"),
        format!(
            "-----BEGIN NATS USER JWT-----\neyJh.eyJi.c2ln\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("broken.creds"), "just text\n").unwrap();
    let head =
        "[[exports]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"nats://a:1\"\nstream = \"S\"\n";
    let auth_of = |extra: &str| -> Result<NatsAuth, String> {
        let e = resolve(&format!("{head}{extra}"))?;
        let ExportKind::Nats(n) = &e[0].kind else {
            panic!("not nats")
        };
        Ok(n.auth.clone())
    };
    let d = dir.display();
    let NatsAuth::Nkey(k) = auth_of(&format!("nkey_seed_file = \"{d}/user.nk\"\n")).unwrap() else {
        panic!("not an nkey")
    };
    assert_eq!(k.public_key(), user.public_key());
    assert!(matches!(
        auth_of(&format!("nkey_seed = \"{seed}\"\n")),
        Ok(NatsAuth::Nkey(_))
    ));
    let creds = auth_of(&format!("credentials_file = \"{d}/user.creds\"\n")).unwrap();
    let NatsAuth::Credentials(c) = &creds else {
        panic!("not creds")
    };
    assert_eq!(c.jwt, "eyJh.eyJi.c2ln");
    assert_eq!(c.key.public_key(), user.public_key());
    // Debug shows neither the seed nor the JWT.
    let shown = format!("{creds:?} {:?}", NatsAuth::Nkey(k));
    assert!(
        !shown.contains(&seed[2..]) && !shown.contains("eyJ"),
        "{shown}"
    );
    // Errors name the key and never repeat the secret.
    let account_seed = account.seed_text();
    for (extra, want) in [
        (
            format!("nkey_seed = \"{account_seed}\"\n"),
            "exports[0].nkey_seed: the nkey seed is an Account key's",
        ),
        (
            "nkey_seed = \"SUNOTASEED\"\n".to_owned(),
            "exports[0].nkey_seed: not an nkey seed",
        ),
        (
            format!("nkey_seed = \"{seed}\"\nnkey_seed_file = \"{d}/user.nk\"\n"),
            "exports[0].nkey_seed: set nkey_seed or nkey_seed_file, not both",
        ),
        (
            format!("credentials_file = \"{d}/broken.creds\"\n"),
            "exports[0].credentials_file: not a .creds file",
        ),
        (
            format!("token = \"t\"\nnkey_seed = \"{seed}\"\n"),
            "exports[0].auth: set one way to authenticate, not a token and an nkey seed",
        ),
        (
            format!("user = \"u\"\npassword = \"p\"\ncredentials_file = \"{d}/user.creds\"\n"),
            "not user and password and a credentials file",
        ),
        (
            "password = \"p\"\n".to_owned(),
            "exports[0].password: a password needs user",
        ),
    ] {
        let got = auth_of(&extra).err().unwrap_or_default();
        assert!(got.contains(want), "{extra:?}\n got: {got}\nwant: {want}");
        assert!(
            !got.contains(&seed[2..]) && !got.contains(&account_seed[2..]),
            "{got}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nats_errors_name_the_line_and_key() {
    let head = "[[exports]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"nats://a:1\"\n";
    let cases = [
        (head.to_string(), "exports[0].stream: kind = \"nats\" needs stream"),
        (
            format!("{head}stream = \"a.b\"\n"),
            "collector.toml:5: exports[0].stream: \"a.b\": a stream name",
        ),
        (
            format!("{head}stream = \"S\"\nsubject = \"x.{{site}}\"\n"),
            "collector.toml:6: exports[0].subject: \"x.{site}\": unknown placeholder {site}",
        ),
        (
            format!("{head}stream = \"S\"\nformat = \"xml\"\n"),
            "exports[0].format: \"xml\": expected \"protobuf\" or \"json\"",
        ),
        (
            format!("{head}stream = \"S\"\nreplicas = 3\n"),
            "collector.toml:6: exports[0].replicas: only used with create_stream = true",
        ),
        (
            format!("{head}stream = \"S\"\nuser = \"u\"\n"),
            "exports[0].user: a user needs password or password_file",
        ),
        (
            format!("{head}stream = \"S\"\ntoken_file = \"missing\"\n"),
            "exports[0].token_file: /etc/tributary/missing:",
        ),
        (
            format!("{head}stream = \"S\"\nshards = 2\n"),
            "collector.toml:6: exports[0].shards: not a key of kind = \"nats\"",
        ),
        (
            format!("{head}stream = \"S\"\n[exports.tls]\ncert = \"c.pem\"\n"),
            "exports[0].tls: cert and key go together",
        ),
        (
            "[[exports]]\nname = \"b\"\nkind = \"nats\"\nurl = \"tls://a:1,nats://b:1\"\nstream = \"S\"\n".into(),
            "exports[0].url: \"tls://a:1,nats://b:1\": mixes nats:// and tls://",
        ),
        (
            "[[exports]]\nname = \"b\"\nkind = \"nats\"\nurl = \"http://a\"\nstream = \"S\"\n".into(),
            "collector.toml:4: exports[0].url: \"http://a\": \"http://a\" does not start with nats://",
        ),
        (
            "[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\nurl = \"http://x/w\"\nstream = \"S\"\n".into(),
            "collector.toml:5: exports[0].stream: not a key of kind = \"remote_write\"",
        ),
    ];
    for (text, want) in cases {
        let got = resolve(&text).err().unwrap_or_default();
        assert!(got.contains(want), "{text:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn subjects_are_rendered_with_sanitised_tokens() {
    let t = SubjectTemplate::parse("tributary.{agent}.{device}").unwrap();
    assert_eq!(
        t.render("edge-1", "pump.3 *>", "m"),
        "tributary.edge-1.pump_3___"
    );
    assert_eq!(t.render("", "d", "m"), "tributary._.d");
    assert_eq!(t.wildcard(), "tributary.*.*");
    let t = SubjectTemplate::parse("x.dev-{device}.{metric}").unwrap();
    assert_eq!(t.render("a", "ü", "m"), "x.dev-_.m");
    assert_eq!(t.wildcard(), "x.*.*");
    for bad in [
        "", "a..b", ".a", "a.", "a.{nope}", "a.{agent", "a b", "a.*", "a.>",
    ] {
        assert!(SubjectTemplate::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn urls_are_lists_of_servers() {
    assert_eq!(
        servers("nats://127.0.0.1:4222").unwrap(),
        (vec!["127.0.0.1:4222".to_owned()], false)
    );
    assert_eq!(
        servers("nats://a:1, nats://b").unwrap(),
        (vec!["a:1".to_owned(), "b:4222".to_owned()], false)
    );
    assert_eq!(
        servers("tls://a:1,tls://b").unwrap(),
        (vec!["a:1".to_owned(), "b:4222".to_owned()], true)
    );
    for bad in [
        "http://a:1",
        "nats://",
        "nats://u:p@a:1",
        "nats://a:x",
        "tls://u:p@a:1",
        "nats://a:1,tls://b:1",
    ] {
        assert!(servers(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn credentials_in_a_bad_url_are_not_shown() {
    for bad in [
        "nats://u:secret@a:1",
        "nats://a:1,nats://u:secret@b:1",
        "nats://a:1, u:secret@b:1",
        "nats://a:1,http://u:secret@b:1/x",
        "nats://u:secret@a/x",
    ] {
        let e = servers(bad).unwrap_err();
        assert!(!e.contains("secret"), "{bad:?}: {e}");
        assert!(e.contains("***@"), "{bad:?}: {e}");
    }
}
