//! Where a config comes from: [`Layer`] (one file: its name, directory, text
//! and line index) and [`Source`] (the part of a layer being parsed), which
//! turn byte spans into located [`ConfigError`]s.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::ConfigError;
use crate::duration::parse_duration;

/// Most bytes a config file (the main one or an included one) may have.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Most bytes a CSV inventory may have.
pub const MAX_CSV_BYTES: u64 = 256 << 20;
/// Most bytes a `<key>_file` secret may have.
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

/// Reads a config file (at most [`MAX_CONFIG_BYTES`]); the error names the
/// file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    read_limited(path, MAX_CONFIG_BYTES).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Reads a text file of at most `limit` bytes: a larger one (or an endless
/// one, `/dev/zero`) is refused after `limit + 1` bytes, never read whole.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(limit.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes, the most this file may have"),
        ));
    }
    Ok(text)
}

/// Byte offsets where the lines of a text start, built once: looking a line
/// up is a binary search, so locating errors in a large file stays linear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        LineIndex { starts }
    }

    /// 1-based line of a byte offset (offsets past the end are on the last line).
    pub fn line(&self, offset: usize) -> usize {
        // Lines starting at or before `offset`; line 1 starts at 0.
        self.starts.partition_point(|&start| start <= offset)
    }

    /// Byte offsets of the line starts, the first being 0.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }
}

/// Where one line of an assembled text came from: a file (an index into
/// the files the text was assembled from) and a 1-based line in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub file: u32,
    pub line: u32,
}

/// One config file, or a text assembled from several (includes, defaults,
/// templates, inventory rows): the unit errors are located in. An assembled
/// layer maps each of its lines back to the file and line it came from, so
/// an error names the file the value was written in. Its `Debug` leaves
/// the text out (an assembled one holds secrets in clear).
pub struct Layer<'t> {
    /// The file as it was named, for messages.
    name: String,
    /// The file's directory; relative paths in the file are resolved against it.
    dir: PathBuf,
    text: &'t str,
    lines: LineIndex,
    /// For an assembled text: the files (name, directory) and, per line of
    /// the text, where it came from.
    assembled: Option<Assembly>,
}

/// The files (name, directory) of an assembled layer and, per line, where
/// it came from.
type Assembly = (Vec<(String, PathBuf)>, Vec<Origin>);

impl std::fmt::Debug for Layer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("bytes", &self.text.len())
            .field("assembled", &self.assembled.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("file", &self.layer.name)
            .field("base", &self.base)
            .field("bytes", &self.text.len())
            .finish_non_exhaustive()
    }
}

impl<'t> Layer<'t> {
    /// The layer of `text`, read from `origin` (which only names it in
    /// messages and anchors its relative paths).
    pub fn new(text: &'t str, origin: &Path) -> Self {
        Layer {
            name: origin.display().to_string(),
            dir: origin.parent().map(Path::to_path_buf).unwrap_or_default(),
            text,
            lines: LineIndex::new(text),
            assembled: None,
        }
    }

    /// The layer of a text assembled from `files` (the first being the main
    /// file, which names the layer), whose line `n` came from `origins[n-1]`.
    pub fn assembled(text: &'t str, files: &[PathBuf], origins: Vec<Origin>) -> Self {
        let main = files.first().map(PathBuf::as_path).unwrap_or(Path::new(""));
        let mut layer = Layer::new(text, main);
        let files = files
            .iter()
            .map(|f| {
                let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
                (f.display().to_string(), dir)
            })
            .collect();
        layer.assembled = Some((files, origins));
        layer
    }

    /// The file (its name and directory) and 1-based line where the byte
    /// `offset` of the text came from.
    fn place(&self, offset: usize) -> (&str, &Path, usize) {
        let line = self.lines.line(offset);
        if let Some((files, origins)) = &self.assembled
            && let Some(origin) = origins.get(line.saturating_sub(1))
            && let Some((name, dir)) = files.get(origin.file as usize)
        {
            return (name, dir, origin.line as usize);
        }
        (&self.name, &self.dir, line)
    }

    /// The whole file.
    pub fn source(&self) -> Source<'_> {
        self.piece(0..self.text.len())
    }

    /// The bytes `range` of the file, parsed on their own: spans in them are
    /// relative to `range.start`, errors still name the file's lines. An
    /// out-of-range piece is empty.
    pub fn piece(&self, range: Range<usize>) -> Source<'_> {
        Source {
            text: self.text.get(range.clone()).unwrap_or(""),
            base: range.start,
            layer: self,
        }
    }

    /// The file with the bytes of `ranges` blanked out (every character
    /// but a line break becomes spaces, one per byte), for
    /// [`Layer::blanked`]: what is left keeps its offsets, so its spans and
    /// lines are still the file's. `ranges` are in order and do not
    /// overlap; a range is widened to whole characters and cut to the end.
    pub fn blank(&self, ranges: &[Range<usize>]) -> String {
        let text = self.text;
        let mut out = String::with_capacity(text.len());
        let mut kept = 0;
        for r in ranges {
            let mut start = r.start.clamp(kept, text.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = r.end.clamp(start, text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            // `kept` is a character boundary, so `start` stays at or after it.
            out.push_str(&text[kept..start]);
            for c in text[start..end].chars() {
                match c {
                    '\n' => out.push('\n'),
                    c => out.extend(std::iter::repeat_n(' ', c.len_utf8())),
                }
            }
            kept = end;
        }
        out.push_str(&text[kept..]);
        out
    }

    /// `text`, the file with parts blanked out by [`Layer::blank`], parsed
    /// as the whole file: spans in it are the file's, errors name its lines.
    pub fn blanked<'a>(&'a self, text: &'a str) -> Source<'a> {
        Source {
            text,
            base: 0,
            layer: self,
        }
    }

    pub fn text(&self) -> &'t str {
        self.text
    }

    pub fn lines(&self) -> &LineIndex {
        &self.lines
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The text being parsed (a whole [`Layer`] or a piece of it), for locating
/// errors. Its `Debug` leaves the text out, as [`Layer`]'s does.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// The part of the file being parsed; spans are relative to it.
    pub text: &'a str,
    /// Where `text` starts in the file.
    base: usize,
    layer: &'a Layer<'a>,
}

impl<'a> Source<'a> {
    /// The file's name, for messages.
    pub fn file(&self) -> &'a str {
        &self.layer.name
    }

    /// 1-based line of a byte offset in [`Source::text`], in the file it
    /// came from (see [`Source::place`]).
    pub fn line(&self, offset: usize) -> usize {
        self.layer.place(self.base + offset.min(self.text.len())).2
    }

    /// `file:line` of a byte offset in [`Source::text`]: the file it was
    /// written in, for an assembled text.
    pub fn place(&self, offset: usize) -> String {
        let (file, _, line) = self.layer.place(self.base + offset.min(self.text.len()));
        format!("{file}:{line}")
    }

    /// An error at `span` about the key path `key` (empty: the file).
    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (file, _, line) = self
            .layer
            .place(self.base + span.start.min(self.text.len()));
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A TOML syntax error, located at its line.
    pub fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        self.error(span, "", format!("invalid toml: {}", e.message()))
    }

    /// A path from the file, resolved against the file's directory (an
    /// absolute path stays as it is).
    pub fn resolve(&self, value: &str) -> PathBuf {
        self.layer.dir.join(value)
    }

    /// A non-empty path from the file at `key`, resolved against the file's
    /// directory.
    pub fn path(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let text = value.get_ref();
        if text.trim().is_empty() {
            return Err(self.error(value.span(), key, "path must not be empty"));
        }
        // Relative to the file the value was written in.
        let (_, dir, _) = self
            .layer
            .place(self.base + value.span().start.min(self.text.len()));
        Ok(dir.join(text))
    }

    /// A duration from the file at `key` (see [`parse_duration`]).
    pub fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        parse_duration(value.get_ref()).map_err(|e| self.error(value.span(), key, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_match_counting_newlines() {
        let text = "a\n\nbc\nd";
        let layer = Layer::new(text, Path::new("x.toml"));
        let src = layer.source();
        for offset in 0..=text.len() + 2 {
            let counted = 1 + text.as_bytes()[..offset.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            assert_eq!(src.line(offset), counted, "offset {offset}");
        }
    }

    #[test]
    fn blanked_parts_keep_the_offsets_and_lines_of_the_rest() {
        let text = "a = 1\n[[x]]\né = \"ü\"\nb = 2\n";
        let layer = Layer::new(text, Path::new("x.toml"));
        // The second range starts inside `é` and is widened to all of it.
        let blanked = layer.blank(&[6..12, 13..21, 40..50]);
        assert_eq!(blanked.len(), text.len());
        assert_eq!(blanked, format!("a = 1\n     \n{}\nb = 2\n", " ".repeat(9)));
        let src = layer.blanked(&blanked);
        let at = blanked.find('b').expect("kept");
        assert_eq!(&text[at..at + 1], "b");
        assert_eq!(src.line(at), 4);
        assert_eq!(layer.blank(&[]), text);
    }

    #[test]
    fn an_endless_config_file_is_refused_naming_it() {
        let e = read_file(Path::new("/dev/zero")).expect_err("refused");
        let shown = e.to_string();
        assert!(
            shown.contains("/dev/zero") && shown.contains("larger than 16777216 bytes"),
            "{shown}"
        );
    }

    #[test]
    fn a_piece_reports_lines_of_the_file() {
        let text = "a = 1\nb = 2\nc = 3\n";
        let layer = Layer::new(text, Path::new("dir/x.toml"));
        let piece = layer.piece(6..text.len());
        assert_eq!(piece.text, "b = 2\nc = 3\n");
        assert_eq!(piece.line(0), 2);
        assert_eq!(piece.line(6), 3);
        assert_eq!(
            piece.error(6..7, "c", "bad").to_string(),
            "dir/x.toml:3: c: bad"
        );
        assert_eq!(layer.piece(99..100).text, "");
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let layer = Layer::new("", Path::new("/etc/t/agent.toml"));
        let src = layer.source();
        assert_eq!(src.resolve("ca.pem"), PathBuf::from("/etc/t/ca.pem"));
        assert_eq!(src.resolve("/x/ca.pem"), PathBuf::from("/x/ca.pem"));
        let empty = Spanned::new(0..0, " ".to_owned());
        assert_eq!(
            src.path(&empty, "tls.ca").map_err(|e| e.to_string()),
            Err("/etc/t/agent.toml:1: tls.ca: path must not be empty".to_owned())
        );
    }

    #[test]
    fn a_read_error_names_the_file_once() {
        let Err(ConfigError::Read { path, error }) = read_file(Path::new("/nonexistent/x.toml"))
        else {
            panic!("a missing file is a read error");
        };
        assert_eq!(path, PathBuf::from("/nonexistent/x.toml"));
        let expected = format!("/nonexistent/x.toml: cannot read config file: {error}");
        let e = ConfigError::Read { path, error };
        assert_eq!(e.to_string(), expected);
        // The cause is in the message, so it is not a `source()` as well.
        assert!(std::error::Error::source(&e).is_none());
    }
}
