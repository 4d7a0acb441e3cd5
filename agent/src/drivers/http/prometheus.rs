//! Parser for the Prometheus text exposition format 0.0.4.
//!
//! A pure function over untrusted input (and a fuzz target): it never panics,
//! and every error names the 1-based line. `# HELP` and `# TYPE` lines are
//! checked for shape; other comments are skipped. Sample lines are
//! `name{label="value",...} value [timestamp]`, with the label value escapes
//! `\\`, `\"` and `\n`, and values such as `NaN`, `+Inf` and `-Inf`.
//!
//! [`SeriesCache`] is the scraping path: a target's series are parsed once,
//! and a line whose series text (`name{labels}`, byte for byte) was seen
//! before costs one hash lookup and a float parse.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::reading::intern;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Milliseconds since the Unix epoch, when the exposer gave one.
    pub timestamp_ms: Option<i64>,
}

/// Why a text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prometheus text line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Why one line is not valid exposition text; [`ParseError`] adds its
/// number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum LineError {
    #[error("# {keyword} without a metric name")]
    CommentWithoutName { keyword: String },
    #[error("invalid metric name \"{0}\"")]
    InvalidMetricName(String),
    #[error("unknown metric type \"{found}\" for {name} (expected one of {})", TYPES.join(", "))]
    UnknownType { found: String, name: String },
    #[error("# TYPE {0} without a type")]
    MissingType(String),
    #[error("unexpected \"{extra}\" after # TYPE {name}")]
    AfterType { extra: String, name: String },
    /// `found` is what [`Cursor::describe_next`] says.
    #[error("expected a metric name, found {found}")]
    ExpectedName { found: String },
    #[error("invalid character {found} in metric name after \"{name}\"")]
    InvalidNameChar { found: String, name: String },
    #[error("missing value for {0}")]
    MissingValue(String),
    #[error("invalid value \"{value}\" for {name}")]
    InvalidValue { value: String, name: String },
    #[error("invalid timestamp \"{timestamp}\" for {name}")]
    InvalidTimestamp { timestamp: String, name: String },
    #[error("unexpected \"{rest}\" after the sample of {name}")]
    AfterSample { rest: String, name: String },
    /// `found` is a quoted name or what [`Cursor::describe_next`] says.
    #[error("expected a label name or }}, found {found}")]
    ExpectedLabelName { found: String },
    #[error("expected = after label name \"{0}\"")]
    ExpectedEquals(String),
    #[error("expected \" to open the value of label \"{0}\"")]
    ExpectedQuote(String),
    #[error("duplicate label \"{0}\"")]
    DuplicateLabel(String),
    #[error("expected , or }} after label \"{name}\", found {found:?}")]
    AfterLabel { name: String, found: char },
    #[error("unterminated label set (missing }})")]
    UnterminatedLabels,
    #[error("unterminated value of label \"{0}\"")]
    UnterminatedValue(String),
    #[error("invalid escape \\{escape} in value of label \"{name}\"")]
    InvalidEscape { escape: char, name: String },
}

impl LineError {
    fn at(self, line: usize) -> ParseError {
        ParseError {
            line,
            message: self.to_string(),
        }
    }
}

/// The metric types a `# TYPE` line may name.
const TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

/// Parses a whole exposition; the samples come in text order.
pub fn parse(text: &str) -> Result<Vec<PromSample>, ParseError> {
    let mut samples = Vec::new();
    for line in sample_lines(text) {
        let (line, trimmed) = line?;
        samples.push(parse_sample(trimmed).map_err(|e| e.at(line))?);
    }
    Ok(samples)
}

/// The sample lines of an exposition with their line numbers (from 1),
/// trimmed; blank lines are skipped and comments checked and skipped.
fn sample_lines(text: &str) -> impl Iterator<Item = Result<(usize, &str), ParseError>> {
    text.split('\n').enumerate().filter_map(|(i, line)| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_matches(is_blank);
        if trimmed.is_empty() {
            return None;
        }
        match trimmed.strip_prefix('#') {
            Some(comment) => parse_comment(comment).err().map(|e| Err(e.at(i + 1))),
            None => Some(Ok((i + 1, trimmed))),
        }
    })
}

/// The series of one target seen so far, keyed by the raw series text of
/// a sample line, with what the caller made of each (an interned key).
///
/// A target writes its series in the same order on every scrape, so the
/// cache also keeps the last scrape's sequence: line `k` is first compared
/// with entry `k` of that sequence (a sequential walk), and only a line
/// that differs costs a hash lookup. When a scrape's sequence differs, it
/// replaces the kept one, and the map is rebuilt from it once it holds more
/// than about twice as many series (series the target stopped exposing are
/// forgotten).
#[derive(Debug)]
pub struct SeriesCache<T> {
    /// Keys are shared with `order` (one allocation per series text).
    map: HashMap<Arc<str>, T>,
    /// The last scrape's series, in text order.
    order: Vec<(Arc<str>, T)>,
}

impl<T> Default for SeriesCache<T> {
    fn default() -> Self {
        SeriesCache {
            map: HashMap::new(),
            order: Vec::new(),
        }
    }
}

impl<T: Clone> SeriesCache<T> {
    /// Series cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Parses a whole exposition exactly like [`parse`] (same samples, same
    /// errors), calling `emit` with each sample's series and value in text
    /// order. A series not cached yet is made by `make(name, labels)` once.
    /// On an error, samples before the bad line have been emitted.
    pub fn parse(
        &mut self,
        text: &str,
        mut make: impl FnMut(&str, BTreeMap<String, String>) -> T,
        mut emit: impl FnMut(&T, f64),
    ) -> Result<(), ParseError> {
        // Samples so far that matched the kept sequence, then (once one
        // did not) this scrape's series from there on.
        let mut matched = 0usize;
        let mut diverged: Option<Vec<(&str, T)>> = None;
        for line in sample_lines(text) {
            let (line, trimmed) = line?;
            let fail = |e: LineError| e.at(line);
            let split = split_series(trimmed);
            // Whether this line continues the kept sequence.
            let in_order = diverged.is_none()
                && split.is_some_and(|(series, _)| {
                    self.order
                        .get(matched)
                        .is_some_and(|(key, _)| **key == *series)
                });
            let known = match split {
                Some(_) if in_order => self.order.get(matched).map(|(_, t)| t.clone()),
                Some((series, _)) => self.map.get(series).cloned(),
                None => None,
            };
            let t = match (known, split) {
                (Some(t), Some((series, rest))) => {
                    // Known series: only the value is left to read.
                    match parse_rest(rest, series.ends_with('}')) {
                        Some(value) => emit(&t, value),
                        None => emit(&t, parse_sample(trimmed).map_err(fail)?.value),
                    }
                    t
                }
                _ => {
                    let sample = parse_sample(trimmed).map_err(fail)?;
                    let t = make(&sample.name, sample.labels);
                    emit(&t, sample.value);
                    if let Some((series, _)) = split {
                        self.map.insert(intern(series), t.clone());
                    }
                    t
                }
            };
            if in_order {
                matched += 1;
            } else {
                diverged
                    .get_or_insert_with(Vec::new)
                    .extend(split.map(|(series, _)| (series, t)));
            }
        }
        if diverged.is_some() || matched != self.order.len() {
            self.order.truncate(matched);
            for (series, t) in diverged.unwrap_or_default() {
                // The map's key (every series of the scrape is in the map).
                let key = match self.map.get_key_value(series) {
                    Some((key, _)) => key.clone(),
                    None => {
                        let key = intern(series);
                        self.map.insert(key.clone(), t.clone());
                        key
                    }
                };
                self.order.push((key, t));
            }
            if self.map.len() > 2 * self.order.len() + 16 {
                self.map = self
                    .order
                    .iter()
                    .map(|(k, t)| (k.clone(), t.clone()))
                    .collect();
            }
        }
        Ok(())
    }
}

/// Splits a sample line (trimmed) into its series text, read the way
/// [`parse_sample`] reads it (`name`, or `name` blanks `{...}` with braces
/// inside quoted values skipped), and the rest; `None` when there is no
/// name or the label set is not closed.
fn split_series(line: &str) -> Option<(&str, &str)> {
    let b = line.as_bytes();
    let name_end = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b':'))
        .unwrap_or(b.len());
    if name_end == 0 {
        return None;
    }
    let open = name_end
        + b.get(name_end..)?
            .iter()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
    if b.get(open) != Some(&b'{') {
        return Some(line.split_at(name_end));
    }
    let mut quoted = false;
    let mut k = open + 1;
    while let Some(&c) = b.get(k) {
        match c {
            b'\\' if quoted => k += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(line.split_at(k + 1)),
            _ => {}
        }
        k += 1;
    }
    None
}

/// Reads `value [timestamp]` after the series text of a line whose series
/// parsed before; `None` if anything is off (the full parser then names
/// the error). Without labels, a blank must separate name and value.
fn parse_rest(rest: &str, has_labels: bool) -> Option<f64> {
    if !has_labels && !rest.starts_with(is_blank) {
        return None;
    }
    let rest = rest.trim_start_matches(is_blank);
    let (value_text, rest) = rest.split_at(rest.find(is_blank).unwrap_or(rest.len()));
    let value = parse_value(value_text)?;
    let rest = rest.trim_start_matches(is_blank);
    let (ts_text, rest) = rest.split_at(rest.find(is_blank).unwrap_or(rest.len()));
    if !ts_text.is_empty() {
        ts_text.parse::<i64>().ok()?;
    }
    rest.trim_matches(is_blank).is_empty().then_some(value)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Checks `# HELP name text` and `# TYPE name type`; other comments pass.
fn parse_comment(comment: &str) -> Result<(), LineError> {
    let mut tokens = comment.split(is_blank).filter(|t| !t.is_empty());
    let keyword = tokens.next();
    if keyword != Some("HELP") && keyword != Some("TYPE") {
        return Ok(());
    }
    let Some(name) = tokens.next() else {
        return Err(LineError::CommentWithoutName {
            keyword: keyword.unwrap_or_default().to_owned(),
        });
    };
    if !is_metric_name(name) {
        return Err(LineError::InvalidMetricName(name.to_owned()));
    }
    if keyword == Some("TYPE") {
        match tokens.next() {
            Some(t) if TYPES.contains(&t) => {}
            Some(t) => {
                return Err(LineError::UnknownType {
                    found: t.to_owned(),
                    name: name.to_owned(),
                });
            }
            None => return Err(LineError::MissingType(name.to_owned())),
        }
        if let Some(extra) = tokens.next() {
            return Err(LineError::AfterType {
                extra: extra.to_owned(),
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// A position in one line. `pos` only ever moves by whole characters, so
/// it always sits on a char boundary.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Skips blanks; returns whether there were any.
    fn skip_blanks(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_blank) {
            self.bump();
        }
        self.pos > start
    }

    /// Takes the longest prefix whose chars satisfy `f`.
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        self.s.get(start..self.pos).unwrap_or("")
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            Some(c) => format!("{c:?}"),
            None => "end of line".to_owned(),
        }
    }
}

fn parse_sample(line: &str) -> Result<PromSample, LineError> {
    let mut c = Cursor { s: line, pos: 0 };
    let name = c.take_while(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':');
    if !is_metric_name(name) {
        return Err(LineError::ExpectedName {
            found: Cursor { s: line, pos: 0 }.describe_next(),
        });
    }
    c.skip_blanks();
    let mut labels = BTreeMap::new();
    if c.peek() == Some('{') {
        c.bump();
        parse_labels(&mut c, &mut labels)?;
        c.skip_blanks();
    } else if c.pos == name.len() && c.peek().is_some() {
        return Err(LineError::InvalidNameChar {
            found: c.describe_next(),
            name: name.to_owned(),
        });
    }
    let value_text = c.take_while(|ch| !is_blank(ch));
    if value_text.is_empty() {
        return Err(LineError::MissingValue(name.to_owned()));
    }
    let value = parse_value(value_text).ok_or_else(|| LineError::InvalidValue {
        value: value_text.to_owned(),
        name: name.to_owned(),
    })?;
    c.skip_blanks();
    let ts_text = c.take_while(|ch| !is_blank(ch));
    let timestamp_ms = if ts_text.is_empty() {
        None
    } else {
        Some(
            ts_text
                .parse::<i64>()
                .map_err(|_| LineError::InvalidTimestamp {
                    timestamp: ts_text.to_owned(),
                    name: name.to_owned(),
                })?,
        )
    };
    c.skip_blanks();
    if !c.rest().is_empty() {
        return Err(LineError::AfterSample {
            rest: c.rest().to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(PromSample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `l="v", ...}` (the `{` is already consumed).
fn parse_labels(
    c: &mut Cursor<'_>,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), LineError> {
    loop {
        c.skip_blanks();
        if c.peek() == Some('}') {
            c.bump();
            return Ok(());
        }
        let name = c.take_while(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if name.is_empty() || name.starts_with(|ch: char| ch.is_ascii_digit()) {
            return Err(LineError::ExpectedLabelName {
                found: if name.is_empty() {
                    c.describe_next()
                } else {
                    format!("\"{name}\"")
                },
            });
        }
        c.skip_blanks();
        if c.bump() != Some('=') {
            return Err(LineError::ExpectedEquals(name.to_owned()));
        }
        c.skip_blanks();
        if c.bump() != Some('"') {
            return Err(LineError::ExpectedQuote(name.to_owned()));
        }
        let value = parse_label_value(c, name)?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(LineError::DuplicateLabel(name.to_owned()));
        }
        c.skip_blanks();
        match c.bump() {
            Some(',') => {}
            Some('}') => return Ok(()),
            Some(other) => {
                return Err(LineError::AfterLabel {
                    name: name.to_owned(),
                    found: other,
                });
            }
            None => return Err(LineError::UnterminatedLabels),
        }
    }
}

/// Reads a label value up to its closing quote (the opening one is consumed).
fn parse_label_value(c: &mut Cursor<'_>, name: &str) -> Result<String, LineError> {
    let mut value = String::new();
    loop {
        match c.bump() {
            None => return Err(LineError::UnterminatedValue(name.to_owned())),
            Some('"') => return Ok(value),
            Some('\\') => match c.bump() {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                Some(other) => {
                    return Err(LineError::InvalidEscape {
                        escape: other,
                        name: name.to_owned(),
                    });
                }
                None => return Err(LineError::UnterminatedValue(name.to_owned())),
            },
            Some(ch) => value.push(ch),
        }
    }
}

/// A sample value: a float, or `NaN`, `+Inf`, `-Inf` (case-insensitive).
fn parse_value(s: &str) -> Option<f64> {
    if s.eq_ignore_ascii_case("nan") {
        Some(f64::NAN)
    } else if s.eq_ignore_ascii_case("+inf") || s.eq_ignore_ascii_case("inf") {
        Some(f64::INFINITY)
    } else if s.eq_ignore_ascii_case("-inf") {
        Some(f64::NEG_INFINITY)
    } else {
        // Rust also reads "infinity"; Prometheus does not write it, keep it.
        s.parse::<f64>().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_a_typical_exposition() {
        let text = "# HELP http_requests_total The total number of HTTP requests.\n\
# TYPE http_requests_total counter\n\
http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n\
\n\
# A normal comment.\n\
metric_without_timestamp_and_labels 12.47\n\
something_weird{problem=\"division by zero\"} +Inf -3982045\n\
rpc_duration_seconds{quantile=\"0.5\",} 4.773e+03\n\
empty_labels{} -Inf\n\
nan_metric NaN\n";
        let samples = parse(text).expect("valid text");
        assert_eq!(samples.len(), 7);
        assert_eq!(
            samples[0],
            PromSample {
                name: "http_requests_total".into(),
                labels: labels(&[("method", "post"), ("code", "200")]),
                value: 1027.0,
                timestamp_ms: Some(1_395_066_363_000),
            }
        );
        assert_eq!(samples[1].value, 3.0);
        assert_eq!(samples[2].labels, BTreeMap::new());
        assert_eq!(samples[2].timestamp_ms, None);
        assert_eq!(samples[3].value, f64::INFINITY);
        assert_eq!(samples[3].timestamp_ms, Some(-3_982_045));
        assert_eq!(samples[4].labels, labels(&[("quantile", "0.5")]));
        assert_eq!(samples[4].value, 4773.0);
        assert_eq!(samples[5].value, f64::NEG_INFINITY);
        assert!(samples[6].value.is_nan());
    }

    #[test]
    fn unescapes_label_values() {
        let text = r#"msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\"", utf8="é"} 1.458255915e9"#;
        let samples = parse(text).expect("valid text");
        assert_eq!(
            samples[0].labels,
            labels(&[
                ("path", r"C:\DIR\FILE.TXT"),
                ("error", "Cannot find file:\n\"FILE.TXT\""),
                ("utf8", "é"),
            ])
        );
        assert_eq!(samples[0].value, 1.458255915e9);
    }

    #[test]
    fn accepts_crlf_and_blank_padding() {
        let samples = parse("  a 1\r\n\tb{x = \"y\" } 2 \r\n").expect("valid text");
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[1].labels, labels(&[("x", "y")]));
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "ok 1\n# TYPE x counter\ngarbage here\n",
                3,
                "invalid value \"here\"",
            ),
            ("ok 1\nno_value\n", 2, "missing value for no_value"),
            ("a{b=\"c\" 1\n", 1, "expected , or }"),
            ("a{b=\"c} 1\n", 1, "unterminated value of label \"b\""),
            ("a{b=\"\\t\"} 1\n", 1, "invalid escape \\t"),
            ("a{b=\"1\",b=\"2\"} 1\n", 1, "duplicate label \"b\""),
            ("a 1 1.5\n", 1, "invalid timestamp \"1.5\""),
            ("a 1 2 3\n", 1, "unexpected \"3\""),
            ("\n\n# TYPE a gauges\n", 3, "unknown metric type \"gauges\""),
            ("1abc 2\n", 1, "expected a metric name"),
            ("a-b 2\n", 1, "invalid character '-'"),
            ("a{1x=\"y\"} 2\n", 1, "expected a label name"),
            ("a{", 1, "expected a label name or }, found end of line"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("prometheus text line {line}: "))
            );
        }
    }

    /// What [`SeriesCache::parse`] gives for `text`, as (name, labels,
    /// value bits), with the error if any.
    type Seen = Vec<(String, BTreeMap<String, String>, u64)>;

    fn through_cache(
        cache: &mut SeriesCache<(String, BTreeMap<String, String>)>,
        text: &str,
    ) -> (Seen, Option<ParseError>) {
        let mut out = Vec::new();
        let result = cache.parse(
            text,
            |name, labels| (name.to_owned(), labels),
            |(name, labels), value| out.push((name.clone(), labels.clone(), value.to_bits())),
        );
        (out, result.err())
    }

    fn direct(text: &str) -> (Seen, Option<ParseError>) {
        match parse(text) {
            Ok(samples) => (
                samples
                    .into_iter()
                    .map(|s| (s.name, s.labels, s.value.to_bits()))
                    .collect(),
                None,
            ),
            Err(e) => {
                // The cache emits the samples before the bad line.
                let before: String = text
                    .split('\n')
                    .take(e.line - 1)
                    .map(|l| format!("{l}\n"))
                    .collect();
                let (seen, _) = direct(&before);
                (seen, Some(e))
            }
        }
    }

    #[test]
    fn cached_parse_equals_parse_on_known_and_new_series() {
        let warm = "a 1\nb{x=\"y\"} 2\nc{p=\"}\\\"{\"} 3\nd {q=\"1\"} 4 100\n";
        let texts = [
            warm,
            "a 5\nb{x=\"y\"} 6 7\nc{p=\"}\\\"{\"} -Inf\nd {q=\"1\"} NaN\n",
            // Known series text followed by things the full parser refuses.
            "a+1 2\n",
            "a-b 2\n",
            "b{x=\"y\"} 1 2 3\n",
            "b{x=\"y\"} 1 1.5\n",
            "b{x=\"y\"}\n",
            "a\n",
            "a1 1\n",
            "b{x=\"y\"}7\n",
            "a\t8\r\n  b{x=\"y\"}  9  \n",
        ];
        for text in texts {
            let mut cache = SeriesCache::default();
            through_cache(&mut cache, warm);
            assert_eq!(through_cache(&mut cache, text), direct(text), "{text:?}");
            // And a second time, now that its own series are known.
            assert_eq!(through_cache(&mut cache, text), direct(text), "{text:?}");
        }
    }

    #[test]
    fn cached_parse_equals_parse_on_random_soup() {
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> = "ab_:{}=\",\\n #\t\r\n1e.+-éNaI".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut cache = SeriesCache::default();
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let text: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            assert_eq!(through_cache(&mut cache, &text), direct(&text), "{text:?}");
        }
    }

    #[test]
    fn cache_makes_a_series_once_and_forgets_vanished_ones() {
        let mut cache: SeriesCache<usize> = SeriesCache::default();
        let mut made = 0;
        let mut scrape = |cache: &mut SeriesCache<usize>, text: &str| {
            let mut ids = Vec::new();
            cache
                .parse(
                    text,
                    |_, _| {
                        made += 1;
                        made
                    },
                    |id, _| ids.push(*id),
                )
                .expect("valid");
            ids
        };
        let first = scrape(&mut cache, "a 1\nb{i=\"0\"} 2\n");
        let second = scrape(&mut cache, "a 3\nb{i=\"0\"} 4\n");
        assert_eq!(first, second);
        assert_eq!(first, vec![1, 2]);
        // 40 new series each scrape: the cache keeps about two scrapes.
        for round in 0..10 {
            let text: String = (0..40)
                .map(|i| format!("g{{r=\"{round}\",i=\"{i}\"}} 1\n"))
                .collect();
            scrape(&mut cache, &text);
            assert!(cache.len() <= 2 * 40 + 16 + 40, "{}", cache.len());
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs = [
            "",
            "{",
            "}",
            "a{",
            "a{\"",
            "a{b",
            "a{b=",
            "a{b=\"",
            "a{b=\"\\",
            "é",
            "a é",
            "a{é=\"x\"} 1",
            "a{b=\"é\\",
            "# HELP",
            "# TYPE",
            "#",
            "a 1 é",
            "\u{0}",
            "a{,} 1",
            "a{b=\"x\",,} 1",
        ];
        for input in inputs {
            let _ = parse(input);
        }
        // Random soup of the characters the grammar cares about.
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> = "ab_:{}=\",\\n #\t\r\n1e.+-éNaI".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let text: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let _ = parse(&text);
        }
        // Every prefix of a valid line with multi-byte characters.
        let line = "m{é=\"ü\\\"ß\",x=\"\\n\"} 1e3 42\n";
        for (i, _) in line.char_indices() {
            let _ = parse(&line[..i]);
        }
    }
}
