//! The MIB parser and resolver on hostile text: the stable-toolchain twin
//! of the `mib_module` cargo-fuzz target (`agent/fuzz`). Random bytes and
//! mutations of a valid module parse or fail with a line, and every name
//! they define resolves or fails; never a panic.

use proptest::prelude::*;
use tributary_agent::drivers::snmp::mib::Mibs;
use tributary_agent::drivers::snmp::parse_oid_ref;

const MODULE: &str = r#"HOSTILE-MIB DEFINITIONS ::= BEGIN
IMPORTS mib-2 FROM SNMPv2-SMI;
Status ::= TEXTUAL-CONVENTION DISPLAY-HINT "255a" STATUS current
    DESCRIPTION "s -- not a comment" SYNTAX INTEGER { up(1), down(2) }
root OBJECT IDENTIFIER ::= { iso org(3) dod(6) 1 2 1 4242 }
tbl OBJECT-TYPE SYNTAX SEQUENCE OF Row MAX-ACCESS not-accessible STATUS current
    DESCRIPTION "t" ::= { root 1 }
row OBJECT-TYPE SYNTAX Row MAX-ACCESS not-accessible STATUS current
    DESCRIPTION "r" INDEX { IMPLIED col } ::= { tbl 1 }
Row ::= SEQUENCE { col Status }
col OBJECT-TYPE SYNTAX Status UNITS "u" MAX-ACCESS read-only STATUS current
    DESCRIPTION "c" DEFVAL { up } ::= { row 1 }
loopA OBJECT IDENTIFIER ::= { loopB 1 }
loopB OBJECT IDENTIFIER ::= { loopA 1 }
END
"#;

/// Parses and resolves everything `text` defines.
fn check(text: &str) {
    let _ = parse_oid_ref(text);
    let Ok(mut mibs) = Mibs::from_text(text) else {
        return;
    };
    for module in mibs.module_names() {
        let Ok(names) = mibs.defined_names(&module) else {
            continue;
        };
        for (name, _) in names {
            if let Ok(o) = mibs.object(&module, &name) {
                assert!(!o.oid.is_empty(), "{module}::{name}");
            }
        }
    }
}

#[test]
fn the_valid_module_resolves() {
    let mut mibs = Mibs::from_text(MODULE).expect("parses");
    let col = mibs.object("HOSTILE-MIB", "col").expect("col");
    assert_eq!(col.oid, [1, 3, 6, 1, 2, 1, 4242, 1, 1, 1]);
    assert_eq!(col.units.as_deref(), Some("u"));
    assert!(col.enums.is_some());
    let e = mibs.object("HOSTILE-MIB", "loopA").expect_err("loop");
    assert!(e.to_string().contains("loop"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_text_parses_or_fails(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_modules_parse_or_fail(
        edits in prop::collection::vec((any::<usize>(), prop::sample::select(
            vec![b'{', b'}', b'(', b')', b'-', b'"', b' ', b'\n', b'1', b'a', b':', b'=', b'.', b'\'']
        )), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = MODULE.as_bytes().to_vec();
        let len = bytes.len();
        for (at, b) in edits {
            bytes[at % len] = b;
        }
        bytes.truncate(len - cut % (len / 4));
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed(depth in 1usize..5000) {
        let text = format!(
            "D DEFINITIONS ::= BEGIN\nT ::= {}INTEGER{}\nEND\n",
            "SEQUENCE OF ".repeat(depth),
            ""
        );
        check(&text);
        let braces = format!("D DEFINITIONS ::= BEGIN\nx OBJECT-TYPE DEFVAL {} ::= {{ iso 1 }}\nEND\n", "{".repeat(depth) + &"}".repeat(depth));
        check(&braces);
    }
}
