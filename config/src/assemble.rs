//! Assembling one TOML text from parts of several files: an [`Assembler`]
//! collects lines, each with the [`Origin`] (file and line) it came from,
//! and a [`Renderer`] writes a spanned TOML value back as such lines,
//! expanding `${VAR}` in every string and resolving `<key>_file` secrets on
//! the way. The result reads like a config written out in full; parsed as a
//! [`crate::Layer::assembled`], its errors still name the file and line each
//! value was written at.
//!
//! Every line is kept twice: as it will be parsed, and as it may be shown
//! (`shown`), where each secret is [`REDACTED`] (a secret key holding a
//! list of strings, each item).

use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::secret::{REDACTED, read_secret_file};
use crate::vars::expand;
use crate::{ConfigError, Origin, Source};

/// One line of an assembled text (no newline in it). Its `Debug` shows
/// where it came from, never its text (which may hold a secret).
#[derive(Clone)]
pub struct Line {
    pub text: String,
    /// What to show instead of `text` (a secret redacted), if it differs.
    pub shown: Option<String>,
    pub origin: Origin,
}

impl Line {
    pub fn new(text: String, origin: Origin) -> Self {
        Line {
            text,
            shown: None,
            origin,
        }
    }
}

/// The value of one key, rendered: a `key = value` line, or a block of
/// `[table]` / `[[array]]` headers and their lines (which TOML wants after
/// every plain key of the enclosing table).
#[derive(Clone)]
pub enum Entry {
    Inline(Line),
    Block(Vec<Line>),
}

/// The text being assembled.
#[derive(Default)]
pub struct Assembler {
    files: Vec<PathBuf>,
    text: String,
    shown: String,
    origins: Vec<Origin>,
}

/// An assembled text, its redacted twin, and where each line came from.
/// Its `Debug` shows the files and the size of the text, never the text
/// (which holds the secrets in clear).
#[derive(Default)]
pub struct Assembled {
    /// The files the text was assembled from, the main file first.
    pub files: Vec<PathBuf>,
    pub text: String,
    /// `text` with every secret [`REDACTED`].
    pub shown: String,
    /// Per line of `text`.
    pub origins: Vec<Origin>,
}

// `Debug` by hand: the texts hold secrets in clear, so they are left out.
impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("origin", &self.origin)
            .field("bytes", &self.text.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Inline(line) => f.debug_tuple("Inline").field(line).finish(),
            Entry::Block(lines) => f.debug_tuple("Block").field(lines).finish(),
        }
    }
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("files", &self.files)
            .field("bytes", &self.text.len())
            .field("lines", &self.origins.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled")
            .field("files", &self.files)
            .field("bytes", &self.text.len())
            .field("lines", &self.origins.len())
            .finish_non_exhaustive()
    }
}

impl Assembler {
    /// An assembler whose file 0 is `main`.
    pub fn new(main: &Path) -> Self {
        Assembler {
            files: vec![main.to_owned()],
            ..Default::default()
        }
    }

    /// Registers a file lines may come from; returns its index.
    pub fn add_file(&mut self, path: &Path) -> u32 {
        self.files.push(path.to_owned());
        u32::try_from(self.files.len() - 1).unwrap_or(u32::MAX)
    }

    /// A comment line in the shown text only (the parsed text keeps one
    /// line per origin).
    /// An empty `text` is a blank line.
    pub fn comment(&mut self, text: &str) {
        if !text.is_empty() {
            self.shown.push_str("# ");
            self.shown.push_str(text);
        }
        self.shown.push('\n');
    }

    /// `file:line` of an origin.
    pub fn place(&self, origin: Origin) -> String {
        match self.files.get(origin.file as usize) {
            Some(f) => format!("{}:{}", f.display(), origin.line),
            None => format!("?:{}", origin.line),
        }
    }

    pub fn push(&mut self, line: &Line) {
        self.text.push_str(&line.text);
        self.text.push('\n');
        self.shown
            .push_str(line.shown.as_deref().unwrap_or(&line.text));
        self.shown.push('\n');
        self.origins.push(line.origin);
    }

    /// Pushes the plain lines of `entries`, then their blocks.
    pub fn push_entries<'e>(&mut self, entries: impl Iterator<Item = &'e Entry> + Clone) {
        for e in entries.clone() {
            if let Entry::Inline(line) = e {
                self.push(line);
            }
        }
        for e in entries {
            if let Entry::Block(lines) = e {
                for line in lines {
                    self.push(line);
                }
            }
        }
    }

    pub fn finish(self) -> Assembled {
        Assembled {
            files: self.files,
            text: self.text,
            shown: self.shown,
            origins: self.origins,
        }
    }
}

/// Writes spanned TOML values back as text.
pub struct Renderer<'a> {
    /// Looks `${VAR}` up.
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Keys whose values are secrets: shown [`REDACTED`], and read from a
    /// file when written as `<key>_file`.
    pub secrets: &'a [&'a str],
}

/// A key as TOML writes it: bare when it can be.
pub fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        toml_string(key)
    }
}

/// A TOML basic string holding `s`.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `prefix.key` as a header path (`prefix` already rendered).
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        toml_key(key)
    } else {
        format!("{prefix}.{}", toml_key(key))
    }
}

/// `prefix.key` as a key path in messages.
fn join_err(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Renderer<'_> {
    /// Expands `${VAR}` in a string from the file; errors name the
    /// variable, the file, the line and the key.
    pub fn expand(
        &self,
        src: &Source<'_>,
        value: &str,
        span: std::ops::Range<usize>,
        key: &str,
    ) -> Result<String, ConfigError> {
        expand(value, self.lookup)
            .map(|c| c.into_owned())
            .map_err(|e| src.error(span, key, e.to_string()))
    }

    /// Whether `key` is a secret, or the `_file` twin of one (then its
    /// secret's name).
    pub fn secret<'k>(&self, key: &'k str) -> (bool, Option<&'k str>) {
        let twin = key
            .strip_suffix("_file")
            .filter(|stem| self.secrets.contains(stem));
        (self.secrets.contains(&key), twin)
    }

    /// Renders every entry of `table` (at header path `prefix`, key path
    /// `err` in messages), keyed by the key it sets (`community_file` sets
    /// `community`). A secret given both ways is an error.
    pub fn entries(
        &self,
        src: &Source<'_>,
        file: u32,
        prefix: &str,
        err: &str,
        table: &DeTable<'_>,
    ) -> Result<Vec<(String, Entry)>, ConfigError> {
        let mut out: Vec<(String, Entry)> = Vec::with_capacity(table.len());
        for (key, value) in table {
            let (name, entry) = self.entry(src, file, prefix, err, key.get_ref(), value)?;
            if out.iter().any(|(k, _)| *k == name) {
                return Err(src.error(
                    key.span(),
                    join_err(err, key.get_ref()),
                    format!("`{name}` is set twice: use either `{name}` or `{name}_file`"),
                ));
            }
            out.push((name, entry));
        }
        Ok(out)
    }

    /// Renders `key = value` of a table at header path `prefix`; returns the
    /// key it sets and its lines.
    pub fn entry(
        &self,
        src: &Source<'_>,
        file: u32,
        prefix: &str,
        err: &str,
        key: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<(String, Entry), ConfigError> {
        let errkey = join_err(err, key);
        let origin = Origin {
            file,
            line: u32::try_from(src.line(value.span().start)).unwrap_or(u32::MAX),
        };
        if let Some((name, text, shown)) = self.secret_value(src, &errkey, key, value)? {
            let k = toml_key(&name);
            return Ok((
                name,
                Entry::Inline(Line {
                    text: format!("{k} = {text}"),
                    shown: Some(format!("{k} = {shown}")),
                    origin,
                }),
            ));
        }
        let entry = match value.get_ref() {
            DeValue::Table(t) => {
                let path = join(prefix, key);
                let mut lines = vec![Line::new(format!("[{path}]"), origin)];
                self.body(src, file, &path, &errkey, t, &mut lines)?;
                Entry::Block(lines)
            }
            DeValue::Array(items)
                if !items.is_empty()
                    && items
                        .iter()
                        .all(|i| matches!(i.get_ref(), DeValue::Table(_))) =>
            {
                let path = join(prefix, key);
                let mut lines = Vec::new();
                for (n, item) in items.iter().enumerate() {
                    let DeValue::Table(t) = item.get_ref() else {
                        continue;
                    };
                    let origin = Origin {
                        file,
                        line: u32::try_from(src.line(item.span().start)).unwrap_or(u32::MAX),
                    };
                    lines.push(Line::new(format!("[[{path}]]"), origin));
                    self.body(src, file, &path, &format!("{errkey}[{n}]"), t, &mut lines)?;
                }
                Entry::Block(lines)
            }
            _ => {
                let (text, shown) = self.inline(src, &errkey, value)?;
                let k = toml_key(key);
                Entry::Inline(Line {
                    shown: (shown != text).then(|| format!("{k} = {shown}")),
                    text: format!("{k} = {text}"),
                    origin,
                })
            }
        };
        Ok((key.to_owned(), entry))
    }

    /// The lines of a table's body: plain keys, then sub-tables.
    fn body(
        &self,
        src: &Source<'_>,
        file: u32,
        path: &str,
        err: &str,
        table: &DeTable<'_>,
        lines: &mut Vec<Line>,
    ) -> Result<(), ConfigError> {
        let entries = self.entries(src, file, path, err, table)?;
        for (_, e) in &entries {
            if let Entry::Inline(line) = e {
                lines.push(line.clone());
            }
        }
        for (_, e) in entries {
            if let Entry::Block(block) = e {
                lines.extend(block);
            }
        }
        Ok(())
    }

    /// The value of `key` when it is a secret or the `_file` twin of one:
    /// the key it sets, its TOML text and that text redacted. A secret
    /// holding a list of strings (`communities`) is redacted item by item.
    fn secret_value(
        &self,
        src: &Source<'_>,
        errkey: &str,
        key: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<Option<(String, String, String)>, ConfigError> {
        let (secret, twin) = self.secret(key);
        if secret
            && twin.is_none()
            && let DeValue::Array(items) = value.get_ref()
        {
            let mut texts = Vec::with_capacity(items.len());
            for item in items.iter() {
                let DeValue::String(s) = item.get_ref() else {
                    return Err(src.error(item.span(), errkey, "expected a list of strings"));
                };
                let s = expand(s, self.lookup)
                    .map(|c| c.into_owned())
                    .map_err(|e| src.error(item.span(), errkey, e.secret_message(s)))?;
                texts.push(toml_string(&s));
            }
            let shown = vec![toml_string(REDACTED); texts.len()];
            return Ok(Some((
                key.to_owned(),
                format!("[{}]", texts.join(", ")),
                format!("[{}]", shown.join(", ")),
            )));
        }
        if !secret && twin.is_none() {
            return Ok(None);
        }
        let DeValue::String(s) = value.get_ref() else {
            return Err(src.error(value.span(), errkey, "expected a string"));
        };
        let s = if twin.is_some() {
            // A path: named in full.
            self.expand(src, s, value.span(), errkey)?
        } else {
            // The error names the key only: a `${` may be part of the secret.
            expand(s, self.lookup)
                .map(|c| c.into_owned())
                .map_err(|e| src.error(value.span(), errkey, e.secret_message(s)))?
        };
        let (name, secret) = match twin {
            Some(stem) => {
                let path = src.path(&Spanned::new(value.span(), s), errkey)?;
                let secret =
                    read_secret_file(&path).map_err(|e| src.error(value.span(), errkey, e))?;
                (stem, secret)
            }
            None => (key, s),
        };
        Ok(Some((
            name.to_owned(),
            toml_string(&secret),
            toml_string(REDACTED),
        )))
    }

    /// A value written on one line, and as it is shown: a secret anywhere
    /// inside it (a key of an inline table, at any depth) is redacted there
    /// and read from its `_file` twin, as on a line of its own.
    fn inline(
        &self,
        src: &Source<'_>,
        err: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<(String, String), ConfigError> {
        let plain = |text: String| (text.clone(), text);
        Ok(match value.get_ref() {
            DeValue::String(s) => plain(toml_string(&self.expand(src, s, value.span(), err)?)),
            DeValue::Integer(n) => match i128::from_str_radix(n.as_str(), n.radix()) {
                Ok(v) => plain(v.to_string()),
                Err(_) => return Err(src.error(value.span(), err, "integer number overflowed")),
            },
            DeValue::Float(f) => plain(f.as_str().to_owned()),
            DeValue::Boolean(b) => plain(b.to_string()),
            DeValue::Datetime(d) => plain(d.to_string()),
            DeValue::Array(items) => {
                let mut texts = Vec::with_capacity(items.len());
                let mut shown = Vec::with_capacity(items.len());
                for (n, item) in items.iter().enumerate() {
                    let (t, s) = self.inline(src, &format!("{err}[{n}]"), item)?;
                    texts.push(t);
                    shown.push(s);
                }
                (
                    format!("[{}]", texts.join(", ")),
                    format!("[{}]", shown.join(", ")),
                )
            }
            DeValue::Table(t) => {
                let mut texts: Vec<(String, String)> = Vec::with_capacity(t.len());
                let mut shown = Vec::with_capacity(t.len());
                for (k, v) in t {
                    let errkey = join_err(err, k.get_ref());
                    let (name, text, s) = match self.secret_value(src, &errkey, k.get_ref(), v)? {
                        Some(secret) => secret,
                        None => {
                            let (text, s) = self.inline(src, &errkey, v)?;
                            (k.get_ref().to_string(), text, s)
                        }
                    };
                    if texts.iter().any(|(n, _)| *n == name) {
                        return Err(src.error(
                            k.span(),
                            errkey,
                            format!("`{name}` is set twice: use either `{name}` or `{name}_file`"),
                        ));
                    }
                    let key = toml_key(&name);
                    shown.push(format!("{key} = {s}"));
                    texts.push((name, format!("{key} = {text}")));
                }
                let texts: Vec<String> = texts.into_iter().map(|(_, t)| t).collect();
                (
                    format!("{{ {} }}", texts.join(", ")),
                    format!("{{ {} }}", shown.join(", ")),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Layer;

    /// Renders every key of `text` as [`Assembler::push_entries`] would.
    fn render(text: &str, dir: &Path) -> Result<Assembled, ConfigError> {
        let path = dir.join("main.toml");
        let layer = Layer::new(text, &path);
        let src = layer.source();
        let table = DeTable::parse(text)
            .map_err(|e| src.syntax_error(&e))?
            .into_inner();
        let r = Renderer {
            lookup: &|name| (name == "PW").then(|| "env-s3cret".to_owned()),
            secrets: &["auth_password", "priv_password", "communities"],
        };
        let entries = r.entries(&src, 0, "", "", &table)?;
        let mut asm = Assembler::new(&path);
        asm.push_entries(entries.iter().map(|(_, e)| e));
        Ok(asm.finish())
    }

    #[test]
    fn secrets_are_redacted_and_read_from_files_at_any_depth() {
        let dir =
            std::env::temp_dir().join(format!("tributary-config-nested-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("pw"), "file-s3cret\n").expect("secret file");
        // Each place a table can sit: an array of inline tables (rendered
        // as `[[users]]`), a table in a table, an inline table among other
        // values and inside an array of arrays.
        let text = "users = [{ user = \"a\", auth_password = \"inline-s3cret\" }, \
                    { user = \"b\", auth_password_file = \"pw\", priv_password = \"${PW}\" }]\n\
                    deep = { inner = { auth_password = \"deep-s3cret\" } }\n\
                    mixed = [1, { priv_password = \"mixed-s3cret\", communities = [\"c-s3cret\"] }]\n\
                    nested = [[{ auth_password_file = \"pw\" }]]\n";
        let a = render(text, &dir).expect("renders");
        assert!(!a.shown.contains("s3cret"), "a secret shown:\n{}", a.shown);
        assert_eq!(a.shown.matches(REDACTED).count(), 7, "{}", a.shown);
        // The parsed text holds each secret, under the key it sets.
        let parsed: toml::Table = toml::from_str(&a.text).expect("the text parses");
        let users = parsed["users"].as_array().expect("users");
        assert_eq!(users[0]["auth_password"].as_str(), Some("inline-s3cret"));
        assert_eq!(users[1]["auth_password"].as_str(), Some("file-s3cret"));
        assert_eq!(users[1]["priv_password"].as_str(), Some("env-s3cret"));
        assert_eq!(
            parsed["deep"]["inner"]["auth_password"].as_str(),
            Some("deep-s3cret")
        );
        assert_eq!(
            parsed["mixed"][1]["priv_password"].as_str(),
            Some("mixed-s3cret")
        );
        assert_eq!(
            parsed["mixed"][1]["communities"][0].as_str(),
            Some("c-s3cret")
        );
        assert_eq!(
            parsed["nested"][0][0]["auth_password"].as_str(),
            Some("file-s3cret")
        );
        // Both ways at once is an error, inline too; an error in a nested
        // secret's `${}` does not show the value.
        let e = render(
            "mixed = [1, { auth_password = \"x\", auth_password_file = \"pw\" }]\n",
            &dir,
        )
        .expect_err("set twice")
        .to_string();
        assert!(e.contains("`auth_password` is set twice"), "{e}");
        let e = render("mixed = [1, { auth_password = \"ab${NOPE}cd\" }]\n", &dir)
            .expect_err("unset variable")
            .to_string();
        assert!(
            e.contains("mixed[1].auth_password") && !e.contains("NOPE"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
