//! Assembling the agent's configuration from its files into one TOML text,
//! written out in full: the main file, its `include`d files, `[defaults]`,
//! `[templates.<name>]` and `[[inventories]]` (one device per CSV row),
//! with `${VAR}` expanded and `<key>_file` secrets read. The text is then
//! validated as if it were one file (see [`super::parse`]); each of its
//! lines remembers the file and line it came from, so errors name the
//! included file, the template or the CSV row a value was written in.
//!
//! Rules:
//! - `include = ["conf.d/*.toml"]` (main file only; `*` and `?` in file
//!   names, relative to the main file, sorted): an included file holds
//!   `[[devices]]`, `[templates.*]` and `[[inventories]]` only, no further
//!   `include`.
//! - A device is, key by key, the first of: its own key, its template's,
//!   `[defaults.<driver>]`, `[defaults]`; `labels` merge label by label in
//!   the same order (a CSV row's `label.<k>` columns are its own). `[defaults]` holds the keys every
//!   device has (`interval`, `timeout`, `backoff_max`, `labels`) and one
//!   table per driver name. A template names no other template.
//! - An inventory CSV's header names device keys (`label.<k>` sets the
//!   label `k`); an empty cell leaves its key unset.
//!
//! Owns: these rules. The TOML rendering, `${VAR}`, secret files, CSV and
//! globs are the config engine's ([`tributary_config`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use tributary_config::{
    Assembled, Assembler, ConfigError, DeContext, Entry, Layer, Line, MAX_CSV_BYTES, Origin,
    REDACTED, Renderer, Source, deserialize_table, expand, expand_glob, parse_csv, read_file,
    read_limited, read_secret_file, toml_key, toml_string,
};

use super::device::DEVICE_COMMON_KEYS;
use super::{device_pieces, devices_run_to_end};

/// Top-level keys this module reads (and leaves out of the assembled text).
const ASSEMBLY_KEYS: &[&str] = &["include", "defaults", "templates", "inventories"];

/// Whether `text` may use anything [`assemble`] handles; when it does not,
/// it is parsed as it is (faster, the same result, and a `[[devices]]`
/// table at a time instead of the whole tree at once). The keys are looked
/// for outside comment lines: the `poll` bench's file says "defaults" in a
/// comment, and parsing its 10,000 devices whole for assembly took the
/// agent's start-up peak from 55 to 107 MiB. A `$` counts anywhere (a line
/// of a multi-line string may start with `#`).
pub(super) fn needs_assembly(text: &str) -> bool {
    text.contains('$')
        || text
            .lines()
            // A `#` line that closes a multi-line string may go on with
            // keys: only a line with no string delimiter is a comment.
            .filter(|line| {
                !line.trim_start().starts_with('#')
                    || line.contains("\"\"\"")
                    || line.contains("'''")
            })
            .any(|line| line.contains("_file") || ASSEMBLY_KEYS.iter().any(|k| line.contains(k)))
}

/// A key's rendered value, keyed by the key it sets.
type Entries = Vec<(String, Entry)>;

/// Sets each of `from`'s keys in `into` (replacing one already there;
/// `labels` merge label by label, see [`merge_labels`]).
fn overlay(into: &mut Entries, from: &Entries) {
    for (k, e) in from {
        match into.iter_mut().find(|(key, _)| key == k) {
            Some(slot) if k == "labels" => merge_labels(&mut slot.1, e),
            Some(slot) => slot.1 = e.clone(),
            None => into.push((k.clone(), e.clone())),
        }
    }
}

/// `labels` of a later layer (a template, the device, a CSV row's
/// `label.<k>` columns) over those of an earlier one (`[defaults]`, the
/// template): a label both set takes the later value, the others stay.
/// Anything but two tables (an error the validation reports) is replaced.
fn merge_labels(into: &mut Entry, from: &Entry) {
    let (Entry::Block(old), Entry::Block(new)) = (&mut *into, from) else {
        *into = from.clone();
        return;
    };
    let is_table = |b: &[Line]| b.first().is_some_and(|l| l.text.starts_with('['));
    if !is_table(old) || !is_table(new) {
        *into = from.clone();
        return;
    }
    let later: HashSet<&str> = new[1..].iter().map(|l| line_key(&l.text)).collect();
    let mut merged = vec![new[0].clone()];
    merged.extend(
        old[1..]
            .iter()
            .filter(|l| !later.contains(line_key(&l.text)))
            .cloned(),
    );
    merged.extend(new[1..].iter().cloned());
    *old = merged;
}

/// The key of a rendered `key = value` line, as written (bare or quoted).
fn line_key(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix('"') {
        // A quoted key: up to its closing quote (`\"` escapes one).
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => return &text[..i + 2],
                _ => escaped = false,
            }
        }
        return text;
    }
    text.split(" = ").next().unwrap_or(text)
}

/// One `[templates.<name>]`.
struct Template {
    entries: Entries,
    /// Its `driver`, as written (after `${VAR}`).
    driver: Option<String>,
    /// `file:line`, for a duplicate's message.
    place: String,
}

/// `[defaults]`.
#[derive(Default)]
struct Defaults {
    common: Entries,
    per_driver: HashMap<String, Entries>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    file: Spanned<String>,
    template: Option<Spanned<String>>,
}

/// One parsed file: its layer's whole table, or its pieces.
struct Doc<'a> {
    file: u32,
    src: Source<'a>,
    /// The top-level table, `devices` taken out.
    top: DeTable<'a>,
    /// Each `devices` array, with the piece it was parsed from.
    devices: Vec<(Source<'a>, Spanned<DeValue<'a>>)>,
}

/// Parses a layer a `[[devices]]` table at a time when its pieces stand
/// alone and run to the end of the file (a top level after the devices is
/// left to [`super::parse`], which parses the assembled text), else as a
/// whole.
fn parse_doc<'a>(layer: &'a Layer<'a>, file: u32) -> Result<Doc<'a>, ConfigError> {
    let pieces = device_pieces(layer);
    if !pieces.is_empty()
        && devices_run_to_end(&pieces, layer.text().len())
        && let Some(doc) = parse_pieces(layer, file, &pieces)
    {
        return Ok(doc);
    }
    let src = layer.source();
    let mut top = DeTable::parse(src.text)
        .map_err(|e| src.syntax_error(&e))?
        .into_inner();
    let devices = top
        .remove("devices")
        .map(|d| (src, d))
        .into_iter()
        .collect();
    Ok(Doc {
        file,
        src,
        top,
        devices,
    })
}

fn parse_pieces<'a>(
    layer: &'a Layer<'a>,
    file: u32,
    pieces: &[std::ops::Range<usize>],
) -> Option<Doc<'a>> {
    let src = layer.piece(0..pieces.first()?.start);
    let mut top = DeTable::parse(src.text).ok()?.into_inner();
    if top.contains_key("devices") {
        return None;
    }
    let mut devices = Vec::with_capacity(pieces.len());
    for range in pieces {
        let piece = layer.piece(range.clone());
        let mut root = DeTable::parse(piece.text).ok()?.into_inner();
        let list = root.remove("devices")?;
        if !root.is_empty() {
            return None;
        }
        devices.push((piece, list));
    }
    top.remove("devices");
    Some(Doc {
        file,
        src,
        top,
        devices,
    })
}

/// The string at `key` of `table`, if any; an error if it is not a string.
fn string_at<'t>(
    src: &Source<'_>,
    table: &'t DeTable<'_>,
    key: &str,
    err: &str,
) -> Result<Option<(&'t str, std::ops::Range<usize>)>, ConfigError> {
    match table.get(key) {
        None => Ok(None),
        Some(v) => match v.get_ref() {
            DeValue::String(s) => Ok(Some((s, v.span()))),
            other => Err(src.error(
                v.span(),
                format!("{err}.{key}"),
                format!("expected a string, found a {}", other.type_str()),
            )),
        },
    }
}

/// Assembles the config whose main file `path` holds `text`;
/// `watched_patterns` receives each include pattern with a wildcard, joined to its directory
/// (for `run --watch`: a new file it matches is a change).
pub(super) fn assemble(
    text: &str,
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    watched_patterns: &mut Vec<PathBuf>,
) -> Result<Assembled, ConfigError> {
    let secrets = crate::drivers::secret_keys();
    let r = Renderer {
        lookup,
        secrets: &secrets,
    };
    let mut asm = Assembler::new(path);
    let main_layer = Layer::new(text, path);
    let mut main = parse_doc(&main_layer, 0)?;

    // Includes: read them all first, so templates anywhere serve devices anywhere.
    let mut included: Vec<PathBuf> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::from([same_file(path)]);
    if let Some(inc) = main.top.remove("include") {
        let DeValue::Array(patterns) = inc.get_ref() else {
            return Err(main.src.error(
                inc.span(),
                "include",
                "expected an array of file patterns, e.g. include = [\"conf.d/*.toml\"]",
            ));
        };
        for (i, p) in patterns.iter().enumerate() {
            let DeValue::String(pattern) = p.get_ref() else {
                return Err(main
                    .src
                    .error(p.span(), format!("include[{i}]"), "expected a string"));
            };
            let pattern = r.expand(&main.src, pattern, p.span(), &format!("include[{i}]"))?;
            let dir = main_layer_dir(path);
            if pattern.contains(['*', '?']) {
                watched_patterns.push(dir.join(&pattern));
            }
            let files = expand_glob(&dir, &pattern)
                .map_err(|e| main.src.error(p.span(), format!("include[{i}]"), e))?;
            // The main file (`*.toml` beside it matches it) and a file two
            // patterns match are read once, as the main file / the first time.
            for f in files {
                if seen.insert(same_file(&f)) {
                    included.push(f);
                }
            }
        }
    }
    let texts = included
        .iter()
        .map(|p| read_file(p))
        .collect::<Result<Vec<String>, ConfigError>>()?;
    let layers: Vec<Layer<'_>> = texts
        .iter()
        .zip(&included)
        .map(|(t, p)| Layer::new(t, p))
        .collect();
    let mut docs = Vec::with_capacity(layers.len());
    for (layer, p) in layers.iter().zip(&included) {
        let file = asm.add_file(p);
        let doc = parse_doc(layer, file)?;
        for (k, v) in doc.top.iter() {
            if !matches!(k.get_ref().as_ref(), "templates" | "inventories") {
                let message = if k.get_ref() == "include" {
                    "includes do not nest: only the main config file may include files".to_owned()
                } else {
                    format!(
                        "an included file holds [[devices]], [templates.*] and [[inventories]] only; `{}` belongs in the main config file",
                        k.get_ref()
                    )
                };
                return Err(doc.src.error(v.span(), k.get_ref().to_string(), message));
            }
        }
        docs.push(doc);
    }

    // Templates, from every file.
    let mut templates: HashMap<String, Template> = HashMap::new();
    for doc in std::iter::once(&mut main).chain(docs.iter_mut()) {
        let Some(t) = doc.top.remove("templates") else {
            continue;
        };
        let DeValue::Table(t) = t.get_ref() else {
            return Err(doc
                .src
                .error(t.span(), "templates", "expected a table of templates"));
        };
        for (name, body) in t {
            let err = format!("templates.{}", name.get_ref());
            let DeValue::Table(table) = body.get_ref() else {
                return Err(doc.src.error(
                    body.span(),
                    err,
                    "a template is a table of device keys",
                ));
            };
            for (k, v) in table {
                if matches!(k.get_ref().as_ref(), "template" | "name") {
                    let message = if k.get_ref() == "name" {
                        "a template names no device: each device sets its own `name`"
                    } else {
                        "a template may not name another template"
                    };
                    return Err(doc
                        .src
                        .error(v.span(), format!("{err}.{}", k.get_ref()), message));
                }
            }
            let driver = match string_at(&doc.src, table, "driver", &err)? {
                Some((d, span)) => Some(r.expand(&doc.src, d, span, &format!("{err}.driver"))?),
                None => None,
            };
            let entries = r.entries(&doc.src, doc.file, "devices", &err, table)?;
            let place = doc.src.place(name.span().start);
            let template = Template {
                entries,
                driver,
                place: place.clone(),
            };
            if let Some(first) = templates.insert(name.get_ref().to_string(), template) {
                return Err(doc.src.error(
                    name.span(),
                    err,
                    format!(
                        "template \"{}\" is defined twice (first at {})",
                        name.get_ref(),
                        first.place
                    ),
                ));
            }
        }
    }

    // Defaults, from the main file.
    let mut defaults = Defaults::default();
    if let Some(d) = main.top.remove("defaults") {
        let DeValue::Table(table) = d.get_ref() else {
            return Err(main.src.error(d.span(), "defaults", "expected a table"));
        };
        for (k, v) in table {
            let key = k.get_ref();
            let err = format!("defaults.{key}");
            if crate::drivers::DRIVERS.contains(&key.as_ref()) {
                let DeValue::Table(t) = v.get_ref() else {
                    return Err(main
                        .src
                        .error(v.span(), err, "expected a table of driver keys"));
                };
                let entries = r.entries(&main.src, 0, "devices", &err, t)?;
                defaults.per_driver.insert(key.to_string(), entries);
            } else if DEVICE_COMMON_KEYS.contains(&key.as_ref())
                && !matches!(key.as_ref(), "name" | "driver")
            {
                let (name, entry) = r.entry(&main.src, 0, "devices", "defaults", key, v)?;
                defaults.common.push((name, entry));
            } else {
                return Err(main.src.error(
                    k.span(),
                    err,
                    format!(
                        "unknown key `{key}` in [defaults] (expected `interval`, `timeout`, `backoff_max`, `labels`, or a table per driver: {})",
                        crate::drivers::DRIVERS
                            .iter()
                            .map(|d| format!("[defaults.{d}]"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }

    let inventories: Vec<Option<Spanned<DeValue<'_>>>> = std::iter::once(&mut main)
        .chain(docs.iter_mut())
        .map(|doc| doc.top.remove("inventories"))
        .collect();

    // The rest of the main file's top level, as written.
    let top = r.entries(&main.src, 0, "", "", &main.top)?;
    asm.push_entries(top.iter().map(|(_, e)| e));

    let mut out = Devices {
        r: &r,
        templates: &templates,
        defaults: &defaults,
        asm,
        count: 0,
    };
    for (doc, inv) in std::iter::once(&main).chain(docs.iter()).zip(&inventories) {
        for (src, list) in &doc.devices {
            out.toml_devices(src, doc.file, list)?;
        }
        if let Some(inv) = inv {
            out.inventories(&doc.src, inv)?;
        }
    }
    Ok(out.asm.finish())
}

/// What two paths naming the same file have in common: the canonical path
/// (or the path itself when it cannot be resolved, e.g. it does not exist).
fn same_file(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn main_layer_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Writes devices out in full.
struct Devices<'a> {
    r: &'a Renderer<'a>,
    templates: &'a HashMap<String, Template>,
    defaults: &'a Defaults,
    asm: Assembler,
    /// Devices written so far: the next one's index in key paths.
    count: usize,
}

impl<'a> Devices<'a> {
    fn toml_devices(
        &mut self,
        src: &Source<'_>,
        file: u32,
        list: &Spanned<DeValue<'_>>,
    ) -> Result<(), ConfigError> {
        let DeValue::Array(items) = list.get_ref() else {
            return Err(src.error(
                list.span(),
                "devices",
                format!(
                    "expected an array of tables ([[devices]]), found a {}",
                    list.get_ref().type_str()
                ),
            ));
        };
        for item in items {
            let err = format!("devices[{}]", self.count);
            let DeValue::Table(table) = item.get_ref() else {
                return Err(src.error(item.span(), err, "expected a table"));
            };
            let mut own = self.r.entries(src, file, "devices", &err, table)?;
            own.retain(|(k, _)| k != "template");
            let template = match string_at(src, table, "template", &err)? {
                Some((name, span)) => {
                    let name =
                        self.r
                            .expand(src, name, span.clone(), &format!("{err}.template"))?;
                    Some(self.template(&name).ok_or_else(|| {
                        src.error(
                            span,
                            format!("{err}.template"),
                            self.unknown_template(&name),
                        )
                    })?)
                }
                None => None,
            };
            let driver = match string_at(src, table, "driver", &err)? {
                Some((d, span)) => Some(self.r.expand(src, d, span, &format!("{err}.driver"))?),
                None => None,
            };
            let origin = Origin {
                file,
                line: u32::try_from(src.line(item.span().start)).unwrap_or(u32::MAX),
            };
            self.write(origin, own, driver, template);
        }
        Ok(())
    }

    fn template(&self, name: &str) -> Option<&'a Template> {
        self.templates.get(name)
    }

    fn unknown_template(&self, name: &str) -> String {
        let mut known: Vec<&str> = self.templates.keys().map(String::as_str).collect();
        known.sort_unstable();
        if known.is_empty() {
            format!("unknown template \"{name}\" (no [templates.<name>] is defined)")
        } else {
            format!(
                "unknown template \"{name}\" (expected one of {})",
                known.join(", ")
            )
        }
    }

    /// Writes one device: defaults, then its template, then its own keys.
    fn write(
        &mut self,
        origin: Origin,
        own: Entries,
        driver: Option<String>,
        template: Option<&'a Template>,
    ) {
        let driver = driver.or_else(|| template.and_then(|t| t.driver.clone()));
        let mut merged: Entries = self.defaults.common.clone();
        if let Some(d) = driver
            .as_ref()
            .and_then(|d| self.defaults.per_driver.get(d))
        {
            overlay(&mut merged, d);
        }
        if let Some(t) = template {
            overlay(&mut merged, &t.entries);
        }
        let merged = if merged.is_empty() {
            own
        } else {
            overlay(&mut merged, &own);
            merged
        };
        // `name` and `driver` first, for the reader of the shown config.
        let mut merged = merged;
        merged.sort_by_key(|(k, _)| match k.as_str() {
            "name" => 0,
            "driver" => 1,
            _ => 2,
        });
        let place = self.asm.place(origin);
        self.asm.comment("");
        self.asm.comment(&place);
        self.asm.push(&Line::new("[[devices]]".to_owned(), origin));
        self.asm.push_entries(merged.iter().map(|(_, e)| e));
        self.count += 1;
    }

    /// The devices of each `[[inventories]]` entry.
    fn inventories(
        &mut self,
        src: &Source<'_>,
        inv: &Spanned<DeValue<'_>>,
    ) -> Result<(), ConfigError> {
        let DeValue::Array(items) = inv.get_ref() else {
            return Err(src.error(
                inv.span(),
                "inventories",
                "expected an array of tables ([[inventories]])",
            ));
        };
        for (i, item) in items.iter().enumerate() {
            let err = format!("inventories[{i}]");
            let DeValue::Table(table) = item.get_ref() else {
                return Err(src.error(item.span(), err, "expected a table"));
            };
            let raw: RawInventory =
                deserialize_table(src, table.clone(), item.span(), &err, &DeContext::default())?;
            let file_key = format!("{err}.file");
            let name = self
                .r
                .expand(src, raw.file.get_ref(), raw.file.span(), &file_key)?;
            let csv_path = src.path(&Spanned::new(raw.file.span(), name), &file_key)?;
            let text = read_limited(&csv_path, MAX_CSV_BYTES).map_err(|e| {
                src.error(
                    raw.file.span(),
                    &file_key,
                    format!("cannot read inventory {}: {e}", csv_path.display()),
                )
            })?;
            let template = match &raw.template {
                Some(t) => {
                    let name =
                        self.r
                            .expand(src, t.get_ref(), t.span(), &format!("{err}.template"))?;
                    if self.template(&name).is_none() {
                        return Err(src.error(
                            t.span(),
                            format!("{err}.template"),
                            self.unknown_template(&name),
                        ));
                    }
                    Some(name)
                }
                None => None,
            };
            self.csv(&csv_path, &text, template.as_deref())?;
        }
        Ok(())
    }

    /// One device per row of an inventory CSV.
    fn csv(&mut self, path: &Path, text: &str, template: Option<&str>) -> Result<(), ConfigError> {
        let name = path.display().to_string();
        let at = |line: usize, key: &str, message: String| ConfigError::Invalid {
            file: name.clone(),
            line,
            key: key.to_owned(),
            message,
        };
        let records = parse_csv(text).map_err(|(line, m)| at(line, "", m))?;
        let Some((header, rows)) = records.split_first() else {
            return Err(at(
                1,
                "",
                "the inventory is empty: expected a header row naming device keys".into(),
            ));
        };
        let columns: Vec<&str> = header.fields.iter().map(|f| f.trim()).collect();
        for (c, col) in columns.iter().enumerate() {
            if col.is_empty() || col.strip_prefix("label.").is_some_and(str::is_empty) {
                return Err(at(header.line, "", format!("column {} has no name", c + 1)));
            }
            if columns[..c].contains(col) {
                return Err(at(
                    header.line,
                    col,
                    format!("column `{col}` appears twice"),
                ));
            }
            // `community` and `community_file` set the same key.
            let sets = |col: &'_ str| self.r.secret(col).1.unwrap_or(col).to_owned();
            if let Some(first) = columns[..c].iter().find(|other| sets(other) == sets(col)) {
                let key = sets(col);
                return Err(at(
                    header.line,
                    col,
                    format!(
                        "columns `{first}` and `{col}` both set `{key}`: use either `{key}` or `{key}_file`"
                    ),
                ));
            }
        }
        if !columns.contains(&"name") {
            return Err(at(
                header.line,
                "",
                "the header has no `name` column".into(),
            ));
        }
        let file = self.asm.add_file(path);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for row in rows {
            if row.fields.len() != columns.len() {
                return Err(at(
                    row.line,
                    "",
                    format!(
                        "row has {} fields, the header has {} ({})",
                        row.fields.len(),
                        columns.len(),
                        columns.join(",")
                    ),
                ));
            }
            let origin = Origin {
                file,
                line: u32::try_from(row.line).unwrap_or(u32::MAX),
            };
            let mut own: Entries = Vec::with_capacity(columns.len());
            let mut labels: Vec<Line> = Vec::new();
            let mut row_template = template.map(str::to_owned);
            let mut driver = None;
            for (col, cell) in columns.iter().zip(&row.fields) {
                if cell.is_empty() {
                    continue;
                }
                let (secret, twin) = self.r.secret(col);
                let value = expand(cell, self.r.lookup)
                    .map_err(|e| {
                        // A secret's error names the column only: a `${`
                        // may be part of the secret.
                        let message = if secret {
                            e.secret_message(cell)
                        } else {
                            e.to_string()
                        };
                        at(row.line, &format!("column {col}"), message)
                    })?
                    .into_owned();
                if let Some(label) = col.strip_prefix("label.") {
                    labels.push(Line::new(
                        format!("{} = {}", toml_key(label), toml_string(&value)),
                        origin,
                    ));
                    continue;
                }
                match *col {
                    "template" => {
                        row_template = Some(value);
                        continue;
                    }
                    "driver" => driver = Some(value.clone()),
                    _ => {}
                }
                let (key, value, shown) = match twin {
                    Some(stem) => {
                        let secret = read_secret_file(&dir.join(&value))
                            .map_err(|e| at(row.line, &format!("column {col}"), e))?;
                        (stem, secret, true)
                    }
                    None => (*col, value, secret),
                };
                let k = toml_key(key);
                own.push((
                    key.to_owned(),
                    Entry::Inline(Line {
                        text: format!("{k} = {}", toml_string(&value)),
                        shown: shown.then(|| format!("{k} = {}", toml_string(REDACTED))),
                        origin,
                    }),
                ));
            }
            if !labels.is_empty() {
                labels.insert(0, Line::new("[devices.labels]".to_owned(), origin));
                own.push(("labels".to_owned(), Entry::Block(labels)));
            }
            let template = match &row_template {
                Some(t) => Some(
                    self.template(t)
                        .ok_or_else(|| at(row.line, "column template", self.unknown_template(t)))?,
                ),
                None => None,
            };
            self.write(origin, own, driver, template);
        }
        Ok(())
    }
}
