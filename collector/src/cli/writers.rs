//! The generic writers: rows as an aligned table, as CSV (RFC 4180
//! quoting), or as a JSON array.

use std::borrow::Cow;
use std::io::{self, Write};

use serde_json::Value as Json;

/// A CSV field, quoted (RFC 4180) when it holds a comma, quote or line break.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

pub(super) fn write_csv_row(out: &mut impl Write, row: &[String]) -> io::Result<()> {
    let fields: Vec<Cow<'_, str>> = row.iter().map(|f| csv_field(f)).collect();
    writeln!(out, "{}", fields.join(","))
}

pub(super) fn write_csv(
    out: &mut impl Write,
    header: &str,
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    writeln!(out, "{header}")?;
    for row in rows {
        write_csv_row(&mut out, row)?;
    }
    out.flush()
}

pub(super) fn write_json_array(out: &mut impl Write, rows: &[Json]) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut out, rows)?;
    writeln!(out)?;
    out.flush()
}

/// A table cell on one line: control characters are escaped.
fn cell(s: &str) -> Cow<'_, str> {
    if s.contains(char::is_control) {
        Cow::Owned(s.escape_debug().to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub(super) fn write_table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = io::BufWriter::new(out);
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(c);
            if i + 1 < widths.len() {
                text.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut header.iter().copied())?;
    for row in &rows {
        line(&mut row.iter().map(|c| c.as_ref()))?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field(""), "");
    }
}
