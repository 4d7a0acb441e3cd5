//! MIB names resolve as net-snmp resolves them: every named node of the
//! IETF modules npm's `net-snmp` carries (SNMPv2-SMI/TC/CONF/MIB, IF-MIB,
//! IANAifType-MIB, RFC1213-MIB, ...) and of net-snmp's own modules
//! (Debian's `libsnmp-base`: NET-SNMP-*, UCD-*) gets the same numeric OID
//! from the agent's resolver as from `snmptranslate -m ALL` over the same
//! directories. And the errors: an unknown name is a config error with its
//! file, line and the closest names; a broken MIB file is skipped unless a
//! name needs it, then named with its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use tributary_agent::drivers::DriverConfig;
use tributary_agent::drivers::snmp::mib::{Format, Mibs};
use tributary_agent::drivers::snmp::oid_string;
use tributary_tests::peers::{snmp_mib_dirs, tool};
use tributary_tests::process::TestDir;

/// The two MIB directories: IETF modules from npm, net-snmp's from Debian.
fn mib_dirs() -> Result<Vec<PathBuf>> {
    snmp_mib_dirs()
}

fn snmptranslate() -> Result<PathBuf> {
    tool("TRIBUTARY_SNMPTRANSLATE", &["/usr/bin/snmptranslate"])
}

/// `-M dir1:dir2`.
fn search_path(dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    shown.join(":")
}

/// Every node net-snmp loads with `-m ALL`: name → its OIDs (`-Tz`).
fn netsnmp_tree(dirs: &[PathBuf]) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let out = Command::new(snmptranslate()?)
        .args(["-M", &search_path(dirs), "-m", "ALL", "-Tz"])
        .output()
        .context("run snmptranslate")?;
    ensure!(out.status.success(), "snmptranslate -Tz failed: {out:?}");
    let mut tree: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split('"').collect();
        // "name"\t\t\t"1.3.6.1"
        if let [_, name, _, oid, ..] = fields.as_slice() {
            tree.entry((*name).to_owned())
                .or_default()
                .insert((*oid).to_owned());
        }
    }
    ensure!(
        tree.len() > 100,
        "snmptranslate -Tz printed {} names",
        tree.len()
    );
    Ok(tree)
}

/// `snmptranslate -On MODULE::name` for one name (for the few names
/// defined at two OIDs).
fn translate_one(dirs: &[PathBuf], module: &str, name: &str) -> Result<String> {
    let out = Command::new(snmptranslate()?)
        .args(["-M", &search_path(dirs), "-m", "ALL", "-On"])
        .arg(format!("{module}::{name}"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last() {
        Some(l) if out.status.success() => Ok(l.trim_start_matches('.').to_owned()),
        _ => bail!("snmptranslate {module}::{name}: {out:?}"),
    }
}

/// Names net-snmp lists that the agent does not define, on purpose: the
/// roots of the OID tree (built in, defined by no module), and RFC-1215's
/// SMIv1 `TRAP-TYPE`s that SNMPv2-MIB does not redefine as notifications
/// (nothing to poll; net-snmp also makes up the node `snmp#` for them).
const NOT_DEFINED: [&str; 7] = [
    "ccitt",
    "itu-t",
    "iso",
    "joint-iso-ccitt",
    "joint-iso-itu-t",
    "egpNeighborLoss",
    "snmp#",
];

#[test]
fn every_name_resolves_as_snmptranslate_does() -> Result<()> {
    let dirs = mib_dirs()?;
    let tree = netsnmp_tree(&dirs)?;
    let started = Instant::now();
    let mut mibs = Mibs::new(dirs.clone());
    let modules = mibs.module_names();
    let mut compared = 0;
    let mut object_types = 0;
    let mut disagree = Vec::new();
    let mut only_ours = Vec::new();
    let mut only_netsnmp = Vec::new();
    // A module we fail to load hides its names from the comparison: it is
    // a failure of its own, and so is a name net-snmp knows that no module
    // of ours defines.
    let mut unloadable = Vec::new();
    let mut ours_anywhere = BTreeSet::new();
    for module in &modules {
        let names = match mibs.defined_names(module) {
            Ok(names) => names,
            Err(e) => {
                unloadable.push(format!("{module}: {e}"));
                continue;
            }
        };
        for (name, is_object_type) in names {
            ours_anywhere.insert(name.clone());
            let ours = mibs.object(module, &name).map(|o| oid_string(&o.oid));
            let theirs = tree.get(&name);
            match (ours, theirs) {
                (Ok(ours), Some(theirs)) => {
                    compared += 1;
                    object_types += usize::from(is_object_type);
                    let agree = if theirs.len() == 1 {
                        theirs.contains(&ours)
                    } else {
                        translate_one(&dirs, module, &name)? == ours
                    };
                    if !agree {
                        disagree.push(format!(
                            "{module}::{name}: ours {ours}, net-snmp {theirs:?}"
                        ));
                    }
                }
                (Ok(ours), None) => only_ours.push(format!("{module}::{name} = {ours}")),
                (Err(e), Some(_)) => only_netsnmp.push(format!("{module}::{name}: {e}")),
                (Err(_), None) => {}
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{} modules in {}: {compared} names compared ({object_types} OBJECT-TYPEs), {} disagree; \
         {} resolved only by the agent, {} only by net-snmp; every module loaded and resolved in {elapsed:?}",
        modules.len(),
        search_path(&dirs),
        disagree.len(),
        only_ours.len(),
        only_netsnmp.len()
    );
    for line in only_ours.iter().chain(&only_netsnmp) {
        println!("  {line}");
    }
    ensure!(
        unloadable.is_empty(),
        "modules the agent cannot load:\n{}",
        unloadable.join("\n")
    );
    let unknown: Vec<&String> = tree
        .keys()
        .filter(|n| !ours_anywhere.contains(*n) && !NOT_DEFINED.contains(&n.as_str()))
        .collect();
    ensure!(
        unknown.is_empty(),
        "{} names net-snmp loads that no module of the agent's defines: {unknown:?}",
        unknown.len()
    );
    ensure!(
        disagree.is_empty(),
        "disagreements:\n{}",
        disagree.join("\n")
    );
    ensure!(
        only_netsnmp.is_empty(),
        "names net-snmp resolves and the agent does not:\n{}",
        only_netsnmp.join("\n")
    );
    // Both sets of modules were really there.
    ensure!(modules.iter().any(|m| m == "IF-MIB") && modules.iter().any(|m| m == "UCD-SNMP-MIB"));
    ensure!(
        object_types > 400,
        "only {object_types} OBJECT-TYPEs compared"
    );
    Ok(())
}

#[test]
fn lazy_loading_and_value_meanings_of_if_mib() -> Result<()> {
    let dirs = mib_dirs()?;
    let started = Instant::now();
    let mut mibs = Mibs::new(dirs);
    let name = mibs.object("IF-MIB", "ifName")?;
    let elapsed = started.elapsed();
    println!(
        "IF-MIB::ifName resolved in {elapsed:?}, {} modules parsed",
        mibs.loaded_modules()
    );
    ensure!(name.oid == [1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 1]);
    // IF-MIB and what it imports (SNMPv2-SMI, SNMPv2-TC, SNMPv2-CONF,
    // SNMPv2-MIB, IANAifType-MIB), not net-snmp's dozen modules.
    ensure!(
        mibs.loaded_modules() <= 6,
        "{} modules parsed for one IF-MIB name",
        mibs.loaded_modules()
    );
    ensure!(name.format == Format::Text, "{name:?}");
    ensure!(
        name.index == Some(vec!["IF-MIB::ifIndex".to_owned()]),
        "{name:?}"
    );
    let status = mibs.object("IF-MIB", "ifOperStatus")?;
    let enums = status.enums.context("ifOperStatus has named values")?;
    ensure!(enums.first() == Some(&(1, "up".to_owned())), "{enums:?}");
    ensure!(mibs.object("IF-MIB", "ifPhysAddress")?.format == Format::Hex);
    ensure!(
        mibs.object("IF-MIB", "ifHCInOctets")?.index == Some(vec!["IF-MIB::ifIndex".to_owned()])
    );
    ensure!(
        mibs.object("UCD-SNMP-MIB", "memTotalSwap")?
            .units
            .as_deref()
            == Some("kB")
    );
    ensure!(mibs.object("SNMPv2-MIB", "sysUpTime")?.oid == [1, 3, 6, 1, 2, 1, 1, 3]);
    Ok(())
}

/// An agent config with `mib_dirs` and one SNMP device whose driver keys
/// are `body`; the error text if it does not load.
fn load(dir: &TestDir, mib_dirs: &[PathBuf], body: &str) -> Result<DriverConfig, String> {
    let dirs: Vec<String> = mib_dirs
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    let text = format!(
        "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\nmib_dirs = [{}]\n\
         [[devices]]\nname = \"sw\"\ninterval = \"10s\"\ndriver = \"snmp\"\naddress = \"127.0.0.1:161\"\n{body}",
        dirs.join(", ")
    );
    let path = dir.path().join("agent.toml");
    tributary_agent::config::parse(&text, &path)
        .map(|c| c.devices[0].driver.clone())
        .map_err(|e| e.to_string())
}

#[test]
fn config_names_resolve_and_errors_are_located() -> Result<()> {
    let dir = TestDir::new("snmp-mib-config")?;
    let mut dirs = mib_dirs()?;
    let body = "metrics = [{ oid = \"sysUpTime.0\" }, { name = \"name\", oid = \"SNMPv2-MIB::sysName.0\" }]\n\
                walks = [{ oid = \"IF-MIB::ifHCInOctets\" }, { oid = \"ifOperStatus\", enum_label = true }]\n\
                lookups = [{ label = \"ifName\", oid = \"IF-MIB::ifName\" }]\ndrop_index = true\n";
    let DriverConfig::Snmp(s) = load(&dir, &dirs, body).map_err(anyhow::Error::msg)? else {
        bail!("not snmp");
    };
    ensure!(s.pending.is_empty());
    ensure!(s.metrics[0].name == "sysUpTime" && s.metrics[0].oid == [1, 3, 6, 1, 2, 1, 1, 3, 0]);
    ensure!(s.metrics[1].name == "name" && s.metrics[1].oid == [1, 3, 6, 1, 2, 1, 1, 5, 0]);
    ensure!(
        s.walks[0].name == "ifHCInOctets" && s.walks[0].oid == [1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6]
    );
    ensure!(
        s.walks[0].unit.is_empty(),
        "IF-MIB gives ifHCInOctets no UNITS"
    );
    ensure!(s.walks[1].name == "ifOperStatus" && s.walks[1].meaning.enums.is_some());
    ensure!(s.lookups[0].oid == [1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 1]);

    // An unknown name: file, line, key and the closest names.
    let e = load(
        &dir,
        &dirs,
        "\nwalks = [{ oid = \"IF-MIB::ifHCInOctet\" }]\n",
    )
    .expect_err("typo");
    ensure!(
        e.contains("agent.toml:10: devices[0].walks[0].oid: cannot resolve IF-MIB::ifHCInOctet")
            && e.contains("did you mean ifHCInOctets"),
        "{e}"
    );
    let e = load(&dir, &dirs, "walks = [{ oid = \"ifHCInOctet\" }]\n").expect_err("typo");
    ensure!(e.contains("did you mean IF-MIB::ifHCInOctets"), "{e}");
    let e = load(&dir, &dirs, "walks = [{ oid = \"NOPE-MIB::x\" }]\n").expect_err("no module");
    ensure!(e.contains("no MIB module NOPE-MIB in "), "{e}");
    let e = load(
        &dir,
        &dirs,
        "walks = [{ oid = \"IF-MIB::ifDescr\", enum_label = true }]\n",
    )
    .expect_err("no enums");
    ensure!(
        e.contains("enum_label: IF-MIB::ifDescr is not an enumerated INTEGER"),
        "{e}"
    );
    let e = load(
        &dir,
        &dirs,
        "walks = [{ oid = \"IF-MIB::ifDescr\" }, { oid = \"RFC1213-MIB::ifDescr\" }]\n",
    )
    .expect_err("same default name");
    ensure!(
        e.contains("devices[0].walks[1].oid: duplicate metric name \"ifDescr\""),
        "{e}"
    );

    // A broken MIB file: skipped while nothing needs it, named with its
    // line when something does.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken)?;
    std::fs::write(
        broken.join("BROKEN-MIB.txt"),
        "BROKEN-MIB DEFINITIONS ::= BEGIN\nIMPORTS mib-2 FROM SNMPv2-SMI;\n\
         thing OBJECT IDENTIFIER ::= { mib-2 9999 }\nother OBJECT-TYPE SYNTAX INTEGER { a(1 } ::= { thing 1 }\nEND\n",
    )?;
    dirs.push(broken);
    load(&dir, &dirs, "walks = [{ oid = \"IF-MIB::ifName\" }]\n").map_err(anyhow::Error::msg)?;
    let e = load(&dir, &dirs, "walks = [{ oid = \"BROKEN-MIB::thing\" }]\n").expect_err("broken");
    ensure!(
        e.contains("agent.toml:9: devices[0].walks[0].oid: cannot resolve BROKEN-MIB::thing: MIB module BROKEN-MIB (")
            && e.contains("BROKEN-MIB.txt:4) is broken: expected `)`"),
        "{e}"
    );
    Ok(())
}

#[test]
fn the_deploy_example_with_mib_names_loads() -> Result<()> {
    let dir = TestDir::new("snmp-mib-example")?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/snmp.toml");
    let text = std::fs::read_to_string(&path)?;
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "# mib-example-begin")
        .skip(1)
        .take_while(|l| *l != "# mib-example-end")
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    ensure!(
        block.len() > 10,
        "no MIB example block in {}",
        path.display()
    );
    let DriverConfig::Snmp(s) =
        load(&dir, &mib_dirs()?, &block[6..].join("\n")).map_err(anyhow::Error::msg)?
    else {
        bail!("not snmp");
    };
    ensure!(s.walks.len() == 4 && s.lookups.len() == 2 && s.drop_index);
    ensure!(s.walks[2].name == "ifOperStatus" && s.walks[2].meaning.enum_label);
    Ok(())
}

#[test]
fn lookups_are_labels_matched_to_walks_by_index_oids() -> Result<()> {
    let dir = TestDir::new("snmp-mib-lookups")?;
    let dirs = mib_dirs()?;
    let snmp = |body: &str| match load(&dir, &dirs, body) {
        Ok(DriverConfig::Snmp(s)) => Ok(s),
        Ok(other) => Err(format!("not snmp: {other:?}")),
        Err(e) => Err(e),
    };
    // A lookup takes no metric name: the column walked and used as a
    // label, or a metric named like the lookup's object, are fine.
    let s = snmp(
        "walks = [{ oid = \"IF-MIB::ifAlias\" }]\n\
         lookups = [{ label = \"alias\", oid = \"IF-MIB::ifAlias\" }]\n",
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(s.walks[0].name == "ifAlias" && s.lookups_by_walk() == [vec![0]]);
    snmp(
        "metrics = [{ name = \"ifName\", oid = \"1.3.6.1.2.1.1.3.0\" }]\n\
         walks = [{ oid = \"IF-MIB::ifHCInOctets\" }]\n\
         lookups = [{ label = \"ifName\", oid = \"IF-MIB::ifName\" }]\n",
    )
    .map_err(anyhow::Error::msg)?;

    // RFC1213-MIB::ifIndex and IF-MIB::ifIndex are one object (one OID):
    // ifName (ifXTable, AUGMENTS ifEntry) labels RFC1213-MIB's ifTable.
    let s = snmp(
        "walks = [{ oid = \"RFC1213-MIB::ifInOctets\" }, { oid = \"IF-MIB::ifHCInOctets\" }]\n\
         lookups = [{ label = \"ifName\", oid = \"IF-MIB::ifName\" }]\n",
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(
        s.lookups_by_walk() == [vec![0], vec![0]],
        "{:?}",
        s.lookups_by_walk()
    );

    // A numeric walk of another table: ifName labels nothing, an error.
    let e = snmp(
        "walks = [{ name = \"used\", oid = \"1.3.6.1.2.1.25.2.3.1.6\" }]\n\
         lookups = [{ label = \"ifName\", oid = \"IF-MIB::ifName\" }]\n",
    )
    .err()
    .context("ifName labels hrStorageUsed")?;
    ensure!(
        e.contains(
            "devices[0].lookups[0].oid: lookup \"ifName\" (1.3.6.1.2.1.31.1.1.1.1) labels no walk"
        ),
        "{e}"
    );
    // A lookup label the rows carry already.
    let e = snmp(
        "walks = [{ oid = \"IF-MIB::ifOperStatus\", enum_label = true }]\n\
         lookups = [{ label = \"ifOperStatus\", oid = \"IF-MIB::ifDescr\" }]\n",
    )
    .err()
    .context("label clash")?;
    ensure!(
        e.contains("lookup label \"ifOperStatus\" is its enum_label label on the rows of walk \"ifOperStatus\""),
        "{e}"
    );
    Ok(())
}
