//! Tests of [`deserialize_table`]: every error at the right file, line and
//! key path, with the struct's own field list as the hint.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use super::*;
use crate::Layer;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Top {
    name: String,
    count: Option<u32>,
    server: Option<Server>,
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Server {
    host: Spanned<String>,
    tls: Option<Tls>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Tls {
    cert: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Item {
    id: i64,
    #[serde(default)]
    kind: Kind,
    #[serde(default)]
    env: BTreeMap<String, String>,
    version: Option<Version>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Plain,
    Fancy,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum Version {
    Int(i64),
    Text(String),
}

fn de<T: for<'i> Deserialize<'i>>(text: &str, cx: &DeContext<'_>) -> Result<T, String> {
    let layer = Layer::new(text, Path::new("t.toml"));
    let src = layer.source();
    let doc = DeTable::parse(src.text).map_err(|e| src.syntax_error(&e).to_string())?;
    let span = doc.span();
    deserialize_table(&src, doc.into_inner(), span, "", cx).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    match de::<Top>(text, &DeContext::default()) {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_valid_table_reads_with_spans() {
    let text = "name = \"a\"\ncount = 0x10\n[server]\nhost = \"h\"\n[server.tls]\ncert = \"c\"\n\
                [[items]]\nid = -3\nkind = \"fancy\"\nenv = { A = \"1\" }\nversion = \"2c\"\n\
                [[items]]\nid = 4\nversion = 3\n";
    let top: Top = de(text, &DeContext::default()).expect("valid");
    assert_eq!(top.count, Some(16));
    let server = top.server.expect("server");
    assert_eq!(server.host.get_ref(), "h");
    assert_eq!(&text[server.host.span()], "\"h\"");
    assert_eq!(top.items.len(), 2);
    assert_eq!(top.items[0].kind, Kind::Fancy);
    assert_eq!(top.items[0].env.get("A").map(String::as_str), Some("1"));
    assert_eq!(top.items[0].version, Some(Version::Text("2c".into())));
    assert_eq!(top.items[1].version, Some(Version::Int(3)));
}

#[test]
fn unknown_key_in_a_nested_table_is_located() {
    assert_eq!(
        err("name = \"a\"\n[server]\nhost = \"h\"\n[server.tls]\ncert = \"c\"\nkey = \"k\"\n"),
        "t.toml:6: server.tls: unknown key `key` (expected one of `cert`)"
    );
}

#[test]
fn unknown_key_in_an_array_of_tables_is_located() {
    assert_eq!(
        err("name = \"a\"\n[[items]]\nid = 1\n\n[[items]]\nid = 2\nkidn = \"fancy\"\n"),
        "t.toml:7: items[1]: unknown key `kidn` (expected one of `id`, `kind`, `env`, `version`)"
    );
    // In an inline table inside an array.
    assert_eq!(
        err("name = \"a\"\nitems = [\n  { id = 1 },\n  { id = 2, x = 1 },\n]\n"),
        "t.toml:4: items[1]: unknown key `x` (expected one of `id`, `kind`, `env`, `version`)"
    );
}

#[test]
fn unknown_top_level_key_lists_extra_keys_and_what() {
    let cx = DeContext {
        extra_keys: &["devices"],
        what: " for driver sim",
    };
    assert_eq!(
        de::<Top>("name = \"a\"\n\nnaem = 1\n", &cx).expect_err("unknown"),
        "t.toml:3: unknown key `naem` for driver sim (expected one of `devices`, `name`, `count`, `server`, `items`)"
    );
    // `what` describes the table given, not the tables below it.
    assert_eq!(
        de::<Top>("name = \"a\"\n[server]\n", &cx).expect_err("missing"),
        "t.toml:2: server: missing key `host`"
    );
    assert_eq!(
        de::<Top>("count = 1\n", &cx).expect_err("missing"),
        "t.toml:1: missing key `name` for driver sim"
    );
}

#[test]
fn a_struct_without_fields_allows_no_keys() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}
    assert_eq!(
        de::<Empty>("a = 1\n", &DeContext::default()).expect_err("unknown"),
        "t.toml:1: unknown key `a` (no keys are allowed here)"
    );
}

#[test]
fn a_wrong_type_names_the_key() {
    assert_eq!(
        err("name = \"a\"\ncount = \"many\"\n"),
        "t.toml:2: count: invalid type: string \"many\", expected u32"
    );
    assert_eq!(
        err("name = \"a\"\n[[items]]\nid = 1\n[[items]]\nid = \"two\"\n"),
        "t.toml:5: items[1].id: invalid type: string \"two\", expected i64"
    );
    assert_eq!(
        err("name = \"a\"\ncount = -1\n"),
        "t.toml:2: count: invalid value: integer `-1`, expected u32"
    );
    assert_eq!(
        err("name = \"a\"\nserver = 5\n"),
        "t.toml:2: server: invalid type: integer `5`, expected struct Server"
    );
    assert!(
        err("name = 1979-05-27\n").starts_with("t.toml:1: name: invalid type: datetime"),
        "datetimes are no strings"
    );
}

#[test]
fn an_unknown_value_lists_the_values() {
    assert_eq!(
        err("name = \"a\"\n[[items]]\nid = 1\nkind = \"odd\"\n"),
        "t.toml:4: items[0].kind: unknown value `odd`, expected `plain` or `fancy`"
    );
    assert_eq!(
        err("name = \"a\"\n[[items]]\nid = 1\nkind = 2\n"),
        "t.toml:4: items[0].kind: invalid type: integer `2`, expected enum Kind"
    );
}

#[test]
fn a_missing_key_names_its_table() {
    assert_eq!(
        err("name = \"a\"\nitems = [{ id = 1 }, { kind = \"plain\" }]\n"),
        "t.toml:2: items[1]: missing key `id`"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = err("name = \"a\"\nname = = 3\n");
    assert!(e.starts_with("t.toml:2: invalid toml: "), "{e}");
}
