//! MIB modules: where they are (`mib_dirs`), loading them lazily by module
//! name with their IMPORTS, and resolving a name (`IF-MIB::ifName`,
//! `sysUpTime`) to its numeric OID and what its values mean (enumerations,
//! textual conventions, `UNITS`, the table's `INDEX`).
//!
//! Everything here runs while the configuration loads; a poll never sees
//! a MIB. A module is parsed the first time something needs it (a name in
//! the config, or an IMPORT of a module being resolved), so a config that
//! names `IF-MIB::ifName` reads IF-MIB, SNMPv2-SMI, SNMPv2-TC,
//! SNMPv2-MIB... and nothing else. A bare name (`ifName`) has to be looked
//! for everywhere, so it loads every module of the directories, as
//! net-snmp's `-m ALL` does. A file that does not parse is recorded with
//! its line and skipped: it is an error only for a name that needs it.
//!
//! Why a parser of our own: the one maintained Rust SMI crate, `mib-rs`,
//! is pre-1.0 with breaking changes in every minor release and brings
//! rayon; OID resolution needs a small subset of SMI (about 1,000 lines of code
//! here), checked name by name against net-snmp's `snmptranslate` in
//! `tests/tests/snmp_mibs.rs` and fuzzed (`agent/fuzz`, target
//! `mib_module`).
//!
//! Owns: the [`Mibs`] of one configuration load. The lexer (`lexer.rs`) and
//! the parser (`parse.rs`) know nothing about files or resolution.

pub mod lexer;
pub mod parse;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::parse::{Module, NodeKind, OidPart, Syntax, parse_modules};

/// The directories searched when `mib_dirs` is not set: net-snmp's, and
/// where Debian's `snmp-mibs-downloader` puts the IETF and IANA modules.
pub const DEFAULT_MIB_DIRS: &[&str] = &[
    "/usr/share/snmp/mibs",
    "/usr/share/snmp/mibs/iana",
    "/usr/share/snmp/mibs/ietf",
    "/usr/share/mibs/site",
    "/usr/share/mibs/iana",
    "/usr/share/mibs/ietf",
    "/usr/share/mibs/netsnmp",
];

/// Most IMPORTS hops (or parent links) followed while resolving one name.
const MAX_HOPS: usize = 256;

/// How a value of an object is shown, from its textual convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Text when printable UTF-8, else hex (no MIB information).
    #[default]
    Plain,
    /// `DisplayString`, `SnmpAdminString` and `255a`-like hints: text.
    Text,
    /// `PhysAddress`, `MacAddress` and `1x:` hints: `aa:bb:cc:dd:ee:ff`.
    Hex,
    /// `DateAndTime`: RFC 3339.
    DateAndTime,
}

/// Named values of an enumerated INTEGER: (value, name).
pub type Enums = Arc<[(i64, String)]>;

/// A resolved object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The module that defines it.
    pub module: String,
    pub name: String,
    pub oid: Vec<u32>,
    /// `OBJECT-TYPE` (a value can be read), or another kind of node.
    pub is_object_type: bool,
    pub units: Option<String>,
    pub format: Format,
    /// Named values of an enumerated INTEGER (through its TCs).
    pub enums: Option<Enums>,
    /// The `INDEX` of the row the object is a column of (an `AUGMENTS`
    /// followed to the augmented row), `Module::name` each.
    pub index: Option<Vec<String>>,
    /// The OIDs of the `index` objects (`None` when one does not resolve):
    /// what tells whether two tables share their rows, whatever module
    /// (IF-MIB or RFC1213-MIB) names `ifIndex`.
    pub index_oids: Option<Vec<Vec<u32>>>,
}

/// Why a name does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MibError {
    #[error("no MIB module {module} in {dirs}")]
    NoModule { module: String, dirs: String },
    #[error("MIB module {module} ({file}:{line}) is broken: {message}")]
    Broken {
        module: String,
        file: String,
        line: usize,
        message: String,
    },
    #[error("{module} ({file}) defines no {name}{hint}")]
    NoName {
        module: String,
        file: String,
        name: String,
        hint: String,
    },
    #[error("{0}")]
    Other(String),
}

/// A loaded module and the file it came from.
#[derive(Debug)]
struct Loaded {
    module: Module,
    file: PathBuf,
}

/// A module that could not be loaded.
#[derive(Debug, Clone)]
struct Broken {
    file: PathBuf,
    line: usize,
    message: String,
}

/// The MIB modules of one configuration load.
#[derive(Debug, Default)]
pub struct Mibs {
    dirs: Vec<PathBuf>,
    /// Module name → file, from a scan of the directories (first found
    /// wins, in directory order); `None` until first needed.
    index: Option<HashMap<String, PathBuf>>,
    loaded: HashMap<String, Arc<Loaded>>,
    broken: HashMap<String, Broken>,
    /// Files parsed so far (a file may hold several modules).
    files_read: BTreeSet<PathBuf>,
    /// Every module of the directories has been loaded.
    all_loaded: bool,
}

impl Mibs {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Mibs {
            dirs,
            ..Mibs::default()
        }
    }

    /// The modules of one text, as if it were the only file of the only
    /// directory (for tests and fuzzing: no file system).
    pub fn from_text(text: &str) -> Result<Self, parse::ParseError> {
        let file = PathBuf::from("<text>");
        let mut mibs = Mibs {
            index: Some(HashMap::new()),
            all_loaded: true,
            ..Mibs::default()
        };
        mibs.files_read.insert(file.clone());
        for module in parse_modules(text)? {
            if let Some(index) = mibs.index.as_mut() {
                index
                    .entry(module.name.clone())
                    .or_insert_with(|| file.clone());
            }
            mibs.loaded.entry(module.name.clone()).or_insert_with(|| {
                Arc::new(Loaded {
                    module,
                    file: file.clone(),
                })
            });
        }
        Ok(mibs)
    }

    /// Modules parsed so far.
    pub fn loaded_modules(&self) -> usize {
        self.loaded.len()
    }

    /// Broken modules seen so far: (module, `file:line: message`).
    pub fn broken(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .broken
            .iter()
            .map(|(m, b)| {
                (
                    m.clone(),
                    format!("{}:{}: {}", b.file.display(), b.line, b.message),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn dirs_shown(&self) -> String {
        if self.dirs.is_empty() {
            return "no mib_dirs".into();
        }
        let shown: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        shown.join(", ")
    }

    /// Scans the directories for module names once.
    fn index(&mut self) -> &HashMap<String, PathBuf> {
        let dirs = &self.dirs;
        self.index.get_or_insert_with(|| scan(dirs))
    }

    /// Every module name found in the directories, sorted.
    pub fn module_names(&mut self) -> Vec<String> {
        let mut names: Vec<String> = self.index().keys().cloned().collect();
        names.sort();
        names
    }

    /// The module `name`, parsing its file on first use.
    fn module(&mut self, name: &str) -> Result<Arc<Loaded>, MibError> {
        if let Some(m) = self.loaded.get(name) {
            return Ok(m.clone());
        }
        if let Some(b) = self.broken.get(name) {
            return Err(broken(name, b));
        }
        let Some(file) = self.index().get(name).cloned() else {
            return Err(MibError::NoModule {
                module: name.to_owned(),
                dirs: self.dirs_shown(),
            });
        };
        self.read_file(&file);
        if let Some(m) = self.loaded.get(name) {
            return Ok(m.clone());
        }
        let b = self
            .broken
            .entry(name.to_owned())
            .or_insert_with(|| Broken {
                file: file.clone(),
                line: 1,
                message: format!("the file holds no module {name}"),
            });
        Err(broken(name, b))
    }

    /// Parses one file, recording its modules (or why it is broken).
    fn read_file(&mut self, file: &Path) {
        if !self.files_read.insert(file.to_owned()) {
            return;
        }
        let names_here: Vec<String> = self
            .index()
            .iter()
            .filter(|(_, f)| f.as_path() == file)
            .map(|(m, _)| m.clone())
            .collect();
        let text = match std::fs::read(file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                for m in names_here {
                    self.broken.insert(
                        m,
                        Broken {
                            file: file.to_owned(),
                            line: 1,
                            message: format!("cannot read: {e}"),
                        },
                    );
                }
                return;
            }
        };
        match parse_modules(&text) {
            Ok(modules) => {
                for module in modules {
                    // A module also found earlier in the search path is
                    // not replaced.
                    if self.index().get(&module.name).map(PathBuf::as_path) != Some(file) {
                        continue;
                    }
                    self.loaded.insert(
                        module.name.clone(),
                        Arc::new(Loaded {
                            module,
                            file: file.to_owned(),
                        }),
                    );
                }
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), line = e.line, error = %e.message, "MIB file skipped: it does not parse");
                for m in names_here {
                    self.broken.insert(
                        m,
                        Broken {
                            file: file.to_owned(),
                            line: e.line,
                            message: e.message.clone(),
                        },
                    );
                }
            }
        }
    }

    /// The names module `module` defines (nodes only, not types), with
    /// whether each is an OBJECT-TYPE.
    pub fn defined_names(&mut self, module: &str) -> Result<Vec<(String, bool)>, MibError> {
        let loaded = self.module(module)?;
        Ok(loaded
            .module
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.kind == NodeKind::ObjectType))
            .collect())
    }

    /// Loads every module of the directories.
    pub fn load_all(&mut self) {
        if self.all_loaded {
            return;
        }
        let files: BTreeSet<PathBuf> = self.index().values().cloned().collect();
        for f in files {
            self.read_file(&f);
        }
        self.all_loaded = true;
    }

    /// Resolves `module::name`.
    pub fn object(&mut self, module: &str, name: &str) -> Result<Object, MibError> {
        let (defining, oid) = self.oid_of(module, name, 0)?;
        let loaded = self.module(&defining)?;
        let Some(node) = loaded.module.nodes.iter().find(|n| n.name == name) else {
            return Err(MibError::Other(format!("{defining} lost {name}")));
        };
        let mut object = Object {
            module: defining.clone(),
            name: name.to_owned(),
            oid,
            is_object_type: node.kind == NodeKind::ObjectType,
            units: node.units.clone(),
            format: Format::Plain,
            enums: None,
            index: None,
            index_oids: None,
        };
        if let Some(syntax) = &node.syntax {
            let (format, enums) = self.value_format(&defining, syntax);
            object.format = format;
            object.enums = enums;
        }
        if let Some(index) = self.row_index(&defining, node.value.first()) {
            object.index_oids = index.iter().map(|(_, oid)| oid.clone()).collect();
            object.index = Some(index.into_iter().map(|(name, _)| name).collect());
        }
        Ok(object)
    }

    /// Resolves a bare `name` across every module of the directories: it
    /// must be unique (or every module that defines it must agree).
    pub fn object_anywhere(&mut self, name: &str) -> Result<Object, MibError> {
        self.load_all();
        let mut defining: Vec<String> = self
            .loaded
            .values()
            .filter(|l| l.module.nodes.iter().any(|n| n.name == name))
            .map(|l| l.module.name.clone())
            .collect();
        defining.sort();
        let mut found: Vec<Object> = Vec::new();
        let mut errors = Vec::new();
        for m in &defining {
            match self.object(m, name) {
                Ok(o) => found.push(o),
                Err(e) => errors.push(e),
            }
        }
        let Some(first) = found.first() else {
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
            return Err(MibError::NoName {
                module: "any module".into(),
                file: self.dirs_shown(),
                name: parse::clip(name),
                hint: self.hint(name, None),
            });
        };
        if let Some(other) = found.iter().find(|o| o.oid != first.oid) {
            return Err(MibError::Other(format!(
                "{name} is ambiguous: {}::{name} is {} but {}::{name} is {} (write MODULE::{name})",
                first.module,
                dotted(&first.oid),
                other.module,
                dotted(&other.oid)
            )));
        }
        Ok(first.clone())
    }

    /// The OID of `name` as seen from `module` (defined there, imported,
    /// or a root): the defining module and the arcs.
    fn oid_of(
        &mut self,
        module: &str,
        name: &str,
        hops: usize,
    ) -> Result<(String, Vec<u32>), MibError> {
        self.oid_in_chain(module, name, hops, false)
    }

    /// [`Mibs::oid_of`]; `chained` when `name` is a parent of the name
    /// asked for, whose error already gets the context.
    fn oid_in_chain(
        &mut self,
        module: &str,
        name: &str,
        hops: usize,
        chained: bool,
    ) -> Result<(String, Vec<u32>), MibError> {
        if hops > MAX_HOPS {
            return Err(MibError::Other(format!(
                "{module}::{name}: OID definitions loop (more than {MAX_HOPS} hops)"
            )));
        }
        match name {
            "ccitt" | "itu-t" => return Ok((module.to_owned(), vec![0])),
            "iso" => return Ok((module.to_owned(), vec![1])),
            "joint-iso-ccitt" | "joint-iso-itu-t" => return Ok((module.to_owned(), vec![2])),
            _ => {}
        }
        let loaded = self.module(module)?;
        if let Some(node) = loaded.module.nodes.iter().find(|n| n.name == name) {
            let mut oid = Vec::new();
            for (i, part) in node.value.iter().enumerate() {
                match part {
                    OidPart::Number(n) | OidPart::Named(_, n) => oid.push(*n),
                    OidPart::Name(parent) if i == 0 => {
                        // Context once, at the name asked for: a chain of
                        // parents (or a loop of them) must not nest it.
                        let found = self.oid_in_chain(module, parent, hops + 1, true);
                        let (_, base) = found.map_err(|e| {
                            if chained {
                                return e;
                            }
                            MibError::Other(format!(
                                "{module}::{name} ({}:{}): parent {parent}: {e}",
                                loaded.file.display(),
                                node.line
                            ))
                        })?;
                        oid.extend(base);
                    }
                    OidPart::Name(other) => {
                        return Err(MibError::Other(format!(
                            "{module}::{name} ({}:{}): {other} in the middle of an OID value",
                            loaded.file.display(),
                            node.line
                        )));
                    }
                }
            }
            return Ok((module.to_owned(), oid));
        }
        if let Some((_, from)) = loaded.module.imports.iter().find(|(s, _)| s == name) {
            let from = from.clone();
            return self.oid_in_chain(&from, name, hops + 1, chained);
        }
        Err(MibError::NoName {
            module: module.to_owned(),
            file: loaded.file.display().to_string(),
            name: parse::clip(name),
            hint: self.hint(name, Some(module)),
        })
    }

    /// Where a type named in `module` is defined: (module, definition).
    fn type_def(&mut self, module: &str, name: &str) -> Option<(String, parse::TypeDef)> {
        let mut module = module.to_owned();
        for _ in 0..MAX_HOPS {
            let loaded = self.module(&module).ok()?;
            if let Some(t) = loaded.module.types.iter().find(|t| t.name == name) {
                return Some((module, t.clone()));
            }
            let (_, from) = loaded.module.imports.iter().find(|(s, _)| s == name)?;
            module = from.clone();
        }
        None
    }

    /// The format and enumerations of a SYNTAX, following its textual
    /// conventions.
    fn value_format(&mut self, module: &str, syntax: &Syntax) -> (Format, Option<Enums>) {
        let mut format = None;
        let mut enums = None;
        let mut current = (module.to_owned(), syntax.clone(), None::<String>);
        for _ in 0..MAX_HOPS {
            let (module, syntax, hint) = &current;
            if enums.is_none() && !syntax.named.is_empty() && syntax.base != "BITS" {
                enums = Some(Arc::from(syntax.named.clone()));
            }
            if format.is_none() {
                format = format_of_name(&syntax.base)
                    .or_else(|| hint.as_deref().and_then(format_of_hint));
            }
            if format.is_some() && enums.is_some() {
                break;
            }
            let Some((defined_in, t)) = self.type_def(module, &syntax.base) else {
                break;
            };
            current = (defined_in, t.syntax, t.display_hint);
        }
        // The hint of the last TC reached, when no name decided.
        if format.is_none()
            && let Some(h) = current.2.as_deref()
        {
            format = format_of_hint(h);
        }
        (format.unwrap_or_default(), enums)
    }

    /// The INDEX of the row `parent` names (an AUGMENTS followed):
    /// `Module::name` of each index object and its OID when it resolves.
    fn row_index(
        &mut self,
        module: &str,
        parent: Option<&OidPart>,
    ) -> Option<Vec<(String, Option<Vec<u32>>)>> {
        let Some(OidPart::Name(row)) = parent else {
            return None;
        };
        let mut module = module.to_owned();
        let mut row = row.clone();
        for _ in 0..8 {
            let (defining, _) = self.oid_of(&module, &row, 0).ok()?;
            let loaded = self.module(&defining).ok()?;
            let node = loaded.module.nodes.iter().find(|n| n.name == row)?;
            if let Some(aug) = &node.augments {
                module = defining;
                row = aug.clone();
                continue;
            }
            if node.index.is_empty() {
                return None;
            }
            let mut names = Vec::new();
            for i in &node.index {
                let (m, oid) = match self.oid_of(&defining, i, 0) {
                    Ok((m, oid)) => (m, Some(oid)),
                    Err(_) => (defining.clone(), None),
                };
                names.push((format!("{m}::{i}"), oid));
            }
            return Some(names);
        }
        None
    }

    /// ` (did you mean ...?)`: the closest names of the loaded modules.
    fn hint(&self, name: &str, module: Option<&str>) -> String {
        // The search is quadratic in the name's length: a name this long is
        // no typo of a real one.
        if name.chars().count() > parse::SHOWN_MAX {
            return String::new();
        }
        let wanted = name.to_ascii_lowercase();
        let limit = (name.len() / 3).max(2);
        let mut scored: Vec<(usize, String)> = Vec::new();
        for l in self.loaded.values() {
            for n in &l.module.nodes {
                let d = distance(&wanted, &n.name.to_ascii_lowercase());
                if d <= limit {
                    let shown = if Some(l.module.name.as_str()) == module {
                        n.name.clone()
                    } else {
                        format!("{}::{}", l.module.name, n.name)
                    };
                    scored.push((d, shown));
                }
            }
        }
        scored.sort();
        scored.dedup_by(|a, b| a.1 == b.1);
        let best: Vec<String> = scored.into_iter().take(3).map(|(_, n)| n).collect();
        if best.is_empty() {
            String::new()
        } else {
            format!(" (did you mean {}?)", best.join(", "))
        }
    }
}

fn broken(name: &str, b: &Broken) -> MibError {
    MibError::Broken {
        module: name.to_owned(),
        file: b.file.display().to_string(),
        line: b.line,
        message: b.message.clone(),
    }
}

/// The format a textual convention's name implies.
fn format_of_name(name: &str) -> Option<Format> {
    match name {
        "DisplayString" | "SnmpAdminString" | "DisplayString255" => Some(Format::Text),
        "PhysAddress" | "MacAddress" => Some(Format::Hex),
        "DateAndTime" => Some(Format::DateAndTime),
        _ => None,
    }
}

/// The format a DISPLAY-HINT implies, for the hints that decide it.
fn format_of_hint(hint: &str) -> Option<Format> {
    let hint = hint.trim();
    let digits = hint.trim_start_matches(|c: char| c.is_ascii_digit());
    if digits == "a" || digits == "t" {
        return Some(Format::Text);
    }
    if hint == "1x:" || hint == "1x-" {
        return Some(Format::Hex);
    }
    if hint.starts_with("2d-1d-1d,1d:1d:1d.1d") {
        return Some(Format::DateAndTime);
    }
    None
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(prev + usize::from(ca != *cb));
            prev = here;
        }
    }
    row[b.len()]
}

/// Dotted arcs.
fn dotted(oid: &[u32]) -> String {
    super::oid_string(oid)
}

/// The largest file read as a MIB (the largest IETF module is under
/// 1 MiB): a stray large file in a MIB directory is skipped, not read.
pub const MAX_MIB_FILE: u64 = 8 * 1024 * 1024;

/// Module name → file for every module in `dirs` (first directory wins).
/// A module header is `NAME DEFINITIONS ::= BEGIN` (or `DEFINITIONS
/// IMPLICIT TAGS ::=`...) outside comments and strings: a description that
/// mentions "X DEFINITIONS" names no module. Files over [`MAX_MIB_FILE`]
/// are skipped with a warning.
fn scan(dirs: &[PathBuf]) -> HashMap<String, PathBuf> {
    let mut index = HashMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        files.sort();
        for file in files {
            match std::fs::metadata(&file) {
                Ok(m) if m.len() > MAX_MIB_FILE => {
                    tracing::warn!(file = %file.display(), bytes = m.len(), max = MAX_MIB_FILE, "MIB directory: file skipped, larger than any MIB");
                    continue;
                }
                Ok(_) => {}
                Err(_) => continue,
            }
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            for name in module_headers(&String::from_utf8_lossy(&bytes)) {
                index.entry(name).or_insert_with(|| file.clone());
            }
        }
    }
    index
}

/// The names of the modules `text` defines: every `NAME DEFINITIONS` whose
/// next word is `::=` or a tagging word, words taken outside `--` comments
/// (to the end of the line or the next `--`) and `"` strings (which may
/// span lines).
pub(crate) fn module_headers(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    // The last two words seen: (before, DEFINITIONS) waits for its third.
    let mut last: [Option<&str>; 2] = [None, None];
    let mut in_string = false;
    for line in text.lines() {
        let mut in_comment = false;
        let mut start: Option<usize> = None;
        let mut words: Vec<&str> = Vec::new();
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let word_char = !(b.is_ascii_whitespace() || b == b'{' || b == b'"');
            if in_string {
                if b == b'"' {
                    in_string = false;
                }
                i += 1;
                continue;
            }
            if b == b'-' && bytes.get(i + 1) == Some(&b'-') {
                if let Some(s) = start.take()
                    && !in_comment
                {
                    words.push(&line[s..i]);
                }
                in_comment = !in_comment;
                i += 2;
                continue;
            }
            if in_comment {
                i += 1;
                continue;
            }
            if word_char {
                start.get_or_insert(i);
            } else {
                if let Some(s) = start.take() {
                    words.push(&line[s..i]);
                }
                if b == b'"' {
                    in_string = true;
                }
            }
            i += 1;
        }
        if let Some(s) = start
            && !in_comment
        {
            words.push(&line[s..]);
        }
        for word in words {
            if let [Some(name), Some("DEFINITIONS")] = last
                && matches!(word, "::=" | "IMPLICIT" | "EXPLICIT" | "AUTOMATIC")
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
            {
                names.push(name.to_owned());
            }
            last = [last[1], Some(word)];
        }
    }
    names
}

#[cfg(test)]
mod tests;
