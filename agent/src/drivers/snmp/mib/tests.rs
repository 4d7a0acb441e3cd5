//! The MIB parser and resolver on modules written here: OID assignments,
//! imports across files, textual conventions, and the errors.

use std::path::Path;

use super::parse::{NodeKind, OidPart, parse_modules};
use super::*;

const SMI: &str = r#"
TEST-SMI DEFINITIONS ::= BEGIN
-- a comment ends here -- afterComment OBJECT IDENTIFIER ::= { iso 99 }
org OBJECT IDENTIFIER ::= { iso 3 }
dod OBJECT IDENTIFIER ::= { org 6 }
internet OBJECT IDENTIFIER ::= { dod 1 }
mgmt OBJECT IDENTIFIER ::= { internet 2 }
OBJECT-TYPE MACRO ::= BEGIN
    TYPE NOTATION ::= "SYNTAX" Syntax "END-ISH"
    VALUE NOTATION ::= value(VALUE ObjectName)
END
Counter32 ::= [APPLICATION 1] IMPLICIT INTEGER (0..4294967295)
END
"#;

const TC: &str = r#"
TEST-TC DEFINITIONS ::= BEGIN
IMPORTS mgmt FROM TEST-SMI;
DisplayString ::= TEXTUAL-CONVENTION
    DISPLAY-HINT "255a"
    STATUS       current
    DESCRIPTION  "text, with ""quotes"" and -- not a comment"
    SYNTAX       OCTET STRING (SIZE (0..255))
PhysAddress ::= TEXTUAL-CONVENTION
    DISPLAY-HINT "1x:"
    STATUS       current
    DESCRIPTION  "a MAC"
    SYNTAX       OCTET STRING
Status ::= TEXTUAL-CONVENTION
    STATUS       current
    DESCRIPTION  "up or down"
    SYNTAX       INTEGER { up(1), down(2), weird(-3) }
Label ::= TEXTUAL-CONVENTION
    DISPLAY-HINT "32a"
    STATUS       current
    DESCRIPTION  "vendor text"
    SYNTAX       OCTET STRING
END
"#;

const MIB: &str = r#"
TEST-MIB DEFINITIONS ::= BEGIN
IMPORTS
    mgmt, Counter32 FROM TEST-SMI
    DisplayString, PhysAddress, Status, Label FROM TEST-TC;

testMIB MODULE-IDENTITY
    LAST-UPDATED "202612050000Z"
    ORGANIZATION "x"
    CONTACT-INFO "y"
    DESCRIPTION  "z"
    REVISION     "202612050000Z"
    DESCRIPTION  "first"
    ::= { mgmt 4242 }

portTable OBJECT-TYPE
    SYNTAX      SEQUENCE OF PortEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "ports"
    ::= { testMIB 1 }

portEntry OBJECT-TYPE
    SYNTAX      PortEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "a port"
    INDEX       { portIndex }
    ::= { portTable 1 }

PortEntry ::= SEQUENCE { portIndex INTEGER, portName DisplayString }

portIndex OBJECT-TYPE SYNTAX INTEGER (1..100) MAX-ACCESS read-only STATUS current
    DESCRIPTION "i" ::= { portEntry 1 }
portName OBJECT-TYPE SYNTAX DisplayString MAX-ACCESS read-only STATUS current
    DESCRIPTION "n" ::= { portEntry 2 }
portMac OBJECT-TYPE SYNTAX PhysAddress MAX-ACCESS read-only STATUS current
    DESCRIPTION "m" ::= { portEntry 3 }
portStatus OBJECT-TYPE SYNTAX Status MAX-ACCESS read-only STATUS current
    DESCRIPTION "s" ::= { portEntry 4 }
portOctets OBJECT-TYPE SYNTAX Counter32 UNITS "octets" MAX-ACCESS read-only
    STATUS current DESCRIPTION "o" DEFVAL { 0 } ::= { portEntry 5 }
portMode OBJECT-TYPE SYNTAX INTEGER { access(1), trunk(2) } MAX-ACCESS read-only
    STATUS current DESCRIPTION "mode" ::= { portEntry 6 }
portLabel OBJECT-TYPE SYNTAX Label MAX-ACCESS read-only STATUS current
    DESCRIPTION "l" ::= { portEntry 7 }

portXEntry OBJECT-TYPE SYNTAX PortXEntry MAX-ACCESS not-accessible STATUS current
    DESCRIPTION "more" AUGMENTS { portEntry } ::= { testMIB 2 1 }
portAlias OBJECT-TYPE SYNTAX DisplayString MAX-ACCESS read-only STATUS current
    DESCRIPTION "a" ::= { portXEntry 1 }

portDown NOTIFICATION-TYPE OBJECTS { portStatus } STATUS current
    DESCRIPTION "down" ::= { testMIB 0 1 }
oldTrap TRAP-TYPE ENTERPRISE testMIB VARIABLES { portStatus } DESCRIPTION "v1" ::= 3
deep OBJECT IDENTIFIER ::= { iso org(3) dod(6) 1 4 1 9 }
END
"#;

/// A scratch directory, removed when dropped.
struct Dir(std::path::PathBuf);

impl Dir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_with(files: &[(&str, &str)]) -> Dir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tributary-mib-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    Dir(dir)
}

fn mibs(dir: &Path) -> Mibs {
    Mibs::new(vec![dir.to_owned()])
}

#[test]
fn parses_what_resolution_needs() {
    let m = parse_modules(MIB).expect("parses");
    assert_eq!(m.len(), 1);
    let m = &m[0];
    assert_eq!(m.name, "TEST-MIB");
    assert_eq!(m.imports.len(), 6);
    let names: Vec<&str> = m.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "testMIB",
            "portTable",
            "portEntry",
            "portIndex",
            "portName",
            "portMac",
            "portStatus",
            "portOctets",
            "portMode",
            "portLabel",
            "portXEntry",
            "portAlias",
            "portDown",
            "deep"
        ]
    );
    let octets = &m.nodes[7];
    assert_eq!(octets.kind, NodeKind::ObjectType);
    assert_eq!(octets.units.as_deref(), Some("octets"));
    assert_eq!(octets.line, 41);
    assert_eq!(m.nodes[2].index, ["portIndex"]);
    assert_eq!(m.nodes[10].augments.as_deref(), Some("portEntry"));
    assert_eq!(
        m.nodes[13].value,
        [
            OidPart::Name("iso".into()),
            OidPart::Named("org".into(), 3),
            OidPart::Named("dod".into(), 6),
            OidPart::Number(1),
            OidPart::Number(4),
            OidPart::Number(1),
            OidPart::Number(9)
        ]
    );
    let tc = parse_modules(TC).expect("parses");
    let status = tc[0]
        .types
        .iter()
        .find(|t| t.name == "Status")
        .expect("Status");
    assert_eq!(
        status.syntax.named,
        [(1, "up".into()), (2, "down".into()), (-3, "weird".into())]
    );
}

#[test]
fn resolves_across_imports_with_meanings() {
    let dir = dir_with(&[("a.txt", SMI), ("b.my", TC), ("TEST-MIB", MIB)]);
    let mut mibs = mibs(dir.path());
    let o = mibs.object("TEST-MIB", "portOctets").expect("resolves");
    assert_eq!(o.oid, [1, 3, 6, 1, 2, 4242, 1, 1, 5]);
    assert_eq!(o.units.as_deref(), Some("octets"));
    assert_eq!(o.index, Some(vec!["TEST-MIB::portIndex".to_owned()]));
    assert_eq!(
        mibs.object("TEST-MIB", "portName").expect("name").format,
        Format::Text
    );
    assert_eq!(
        mibs.object("TEST-MIB", "portMac").expect("mac").format,
        Format::Hex
    );
    assert_eq!(
        mibs.object("TEST-MIB", "portLabel").expect("hint").format,
        Format::Text
    );
    let status = mibs.object("TEST-MIB", "portStatus").expect("status");
    assert_eq!(status.enums.as_deref().map(<[_]>::len), Some(3));
    let mode = mibs.object("TEST-MIB", "portMode").expect("mode");
    assert_eq!(
        mode.enums.as_deref().map(|e| e[1].1.as_str()),
        Some("trunk")
    );
    // AUGMENTS: the same index as the augmented row.
    let alias = mibs.object("TEST-MIB", "portAlias").expect("alias");
    assert_eq!(alias.oid, [1, 3, 6, 1, 2, 4242, 2, 1, 1]);
    assert_eq!(alias.index, o.index);
    assert_eq!(
        mibs.object("TEST-MIB", "portDown")
            .expect("notification")
            .oid,
        [1, 3, 6, 1, 2, 4242, 0, 1]
    );
    assert_eq!(
        mibs.object("TEST-MIB", "deep").expect("deep").oid,
        [1, 3, 6, 1, 4, 1, 9]
    );
    // Imported names resolve through the importing module.
    assert_eq!(
        mibs.object("TEST-MIB", "mgmt").expect("mgmt").oid,
        [1, 3, 6, 1, 2]
    );
    assert_eq!(
        mibs.object("TEST-SMI", "afterComment").expect("after").oid,
        [1, 99]
    );
    assert_eq!(mibs.loaded_modules(), 3);
    // A bare name.
    assert_eq!(
        mibs.object_anywhere("portAlias").expect("bare").oid,
        alias.oid
    );
}

#[test]
fn only_the_modules_needed_are_read() {
    let dir = dir_with(&[
        ("a.txt", SMI),
        ("b.txt", TC),
        ("c.txt", MIB),
        ("d.txt", "JUNK DEFINITIONS ::= BEGIN x y z END"),
    ]);
    let mut mibs = mibs(dir.path());
    mibs.object("TEST-SMI", "mgmt").expect("mgmt");
    assert_eq!(mibs.loaded_modules(), 1);
    assert!(mibs.broken().is_empty(), "the broken file is not read");
}

#[test]
fn errors_say_where_and_suggest() {
    let broken = "BROKEN-MIB DEFINITIONS ::= BEGIN\nIMPORTS mgmt FROM TEST-SMI;\nfoo OBJECT IDENTIFIER ::= { mgmt 1 }\nbar OBJECT-TYPE SYNTAX INTEGER { a(x) } ::= { foo 1 }\nEND\n";
    let dir = dir_with(&[
        ("a.txt", SMI),
        ("b.txt", TC),
        ("c.txt", MIB),
        ("broken.txt", broken),
    ]);
    let mut mibs = mibs(dir.path());
    let e = mibs
        .object("TEST-MIB", "portNme")
        .expect_err("typo")
        .to_string();
    assert!(
        e.contains("TEST-MIB") && e.contains("defines no portNme"),
        "{e}"
    );
    assert!(e.contains("did you mean portName"), "{e}");
    let e = mibs
        .object("NO-SUCH-MIB", "x")
        .expect_err("no module")
        .to_string();
    assert!(e.starts_with("no MIB module NO-SUCH-MIB in "), "{e}");
    let e = mibs
        .object("BROKEN-MIB", "foo")
        .expect_err("broken")
        .to_string();
    assert!(
        e.contains("broken.txt:4)") && e.contains("expected the number of a"),
        "{e}"
    );
    // The broken module does not keep the others from loading.
    assert!(mibs.object_anywhere("portName").is_ok());
    assert_eq!(mibs.broken().len(), 1);
}

#[test]
fn ambiguous_bare_names_are_refused() {
    let other = "OTHER-MIB DEFINITIONS ::= BEGIN\nIMPORTS mgmt FROM TEST-SMI;\nportName OBJECT IDENTIFIER ::= { mgmt 7 }\nEND\n";
    let dir = dir_with(&[
        ("a.txt", SMI),
        ("b.txt", TC),
        ("c.txt", MIB),
        ("o.txt", other),
    ]);
    let e = mibs(dir.path())
        .object_anywhere("portName")
        .expect_err("ambiguous")
        .to_string();
    assert!(
        e.contains("ambiguous") && e.contains("OTHER-MIB::portName"),
        "{e}"
    );
}

#[test]
fn cycles_and_garbage_do_not_hang_or_panic() {
    let cyclic = "LOOP-MIB DEFINITIONS ::= BEGIN\na OBJECT IDENTIFIER ::= { b 1 }\nb OBJECT IDENTIFIER ::= { a 1 }\nEND\n";
    let dir = dir_with(&[("l.txt", cyclic)]);
    let e = mibs(dir.path())
        .object("LOOP-MIB", "a")
        .expect_err("loop")
        .to_string();
    assert!(e.contains("loop"), "{e}");
    // The context ("LOOP-MIB::a (file:line): parent b") once, not once a hop.
    assert_eq!(e.matches("parent").count(), 1, "{e}");
    assert!(e.len() < 400, "{} bytes: {e}", e.len());
    for text in [
        "",
        "X",
        "X DEFINITIONS",
        "X DEFINITIONS ::= BEGIN a",
        "X DEFINITIONS ::= BEGIN a OBJECT-TYPE SYNTAX",
        "X DEFINITIONS ::= BEGIN } END",
        "X DEFINITIONS ::= BEGIN a OBJECT IDENTIFIER ::= { 99999999999 } END",
    ] {
        let _ = parse_modules(text);
    }
}

#[test]
fn errors_clip_huge_identifiers_and_numbers() {
    let long_name = format!("a{}", "b".repeat(100_000));
    let long_number = "9".repeat(100_000);
    for text in [
        // An unexpected identifier.
        format!("X DEFINITIONS ::= {long_name} END"),
        // Names imported from nowhere.
        format!("X DEFINITIONS ::= BEGIN IMPORTS {long_name}, {long_name}; END"),
        // An OID arc and a named number out of range.
        format!("X DEFINITIONS ::= BEGIN a OBJECT IDENTIFIER ::= {{ iso {long_number} }} END"),
        format!("X DEFINITIONS ::= BEGIN a OBJECT IDENTIFIER ::= {{ iso b({long_number}) }} END"),
        format!("X DEFINITIONS ::= BEGIN T ::= INTEGER {{ {long_name}({long_number}) }} END"),
        format!("X DEFINITIONS ::= BEGIN T ::= INTEGER {{ {long_name}(x) }} END"),
        format!("X DEFINITIONS ::= BEGIN a OBJECT IDENTIFIER ::= {{ iso {long_name}(x) }} END"),
    ] {
        let e = parse_modules(&text).expect_err("garbled").to_string();
        assert!(
            e.len() < 300,
            "{} bytes: {}",
            e.len(),
            &e[..300.min(e.len())]
        );
        assert!(e.contains("..."), "{e}");
    }
    // A name asked for: clipped, and no closest-name search.
    let dir = dir_with(&[(
        "x.txt",
        "X DEFINITIONS ::= BEGIN a OBJECT IDENTIFIER ::= { iso 3 } END\n",
    )]);
    let e = mibs(dir.path())
        .object("X", &long_name)
        .expect_err("no such name")
        .to_string();
    assert!(e.len() < 300, "{} bytes", e.len());
}

#[test]
fn module_headers_are_read_outside_comments_and_strings() {
    let text = r#"
-- OLD-MIB DEFINITIONS ::= BEGIN   (a comment)
REAL-MIB DEFINITIONS ::= BEGIN
  x OBJECT-TYPE
    DESCRIPTION "quoted: FAKE-MIB DEFINITIONS ::= BEGIN
       and a second line: OTHER-MIB DEFINITIONS ::= BEGIN"
  -- a comment -- HALF-MIB DEFINITIONS ::= BEGIN -- commented again
  Prose DEFINITIONS are words
END
TAGGED-MIB DEFINITIONS IMPLICIT TAGS ::= BEGIN END
SPLIT-MIB
  DEFINITIONS
  ::= BEGIN END
"#;
    assert_eq!(
        super::module_headers(text),
        ["REAL-MIB", "HALF-MIB", "TAGGED-MIB", "SPLIT-MIB"]
    );
}

#[test]
fn a_file_larger_than_any_mib_is_not_read() {
    let dir = dir_with(&[("small.txt", "SMALL DEFINITIONS ::= BEGIN END\n")]);
    let big = std::fs::File::create(dir.path().join("big.txt")).expect("create");
    big.set_len(super::MAX_MIB_FILE + 1).expect("grow");
    drop(big);
    assert_eq!(mibs(dir.path()).module_names(), ["SMALL"]);
}
