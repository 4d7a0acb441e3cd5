//! Parser for the Prometheus text exposition format 0.0.4.
//!
//! A pure function over untrusted input (and a fuzz target): it never panics,
//! and every error names the 1-based line. `# HELP` and `# TYPE` lines are
//! checked for shape; other comments are skipped. Sample lines are
//! `name{label="value",...} value [timestamp]`, with the label value escapes
//! `\\`, `\"` and `\n`, and values such as `NaN`, `+Inf` and `-Inf`.

use std::collections::BTreeMap;

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

/// The metric types a `# TYPE` line may name.
const TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

/// Parses a whole exposition; the samples come in text order.
pub fn parse(text: &str) -> Result<Vec<PromSample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let fail = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let trimmed = line.trim_matches(is_blank);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            parse_comment(comment).map_err(fail)?;
            continue;
        }
        samples.push(parse_sample(trimmed).map_err(fail)?);
    }
    Ok(samples)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Checks `# HELP name text` and `# TYPE name type`; other comments pass.
fn parse_comment(comment: &str) -> Result<(), String> {
    let mut tokens = comment.split(is_blank).filter(|t| !t.is_empty());
    let keyword = tokens.next();
    if keyword != Some("HELP") && keyword != Some("TYPE") {
        return Ok(());
    }
    let Some(name) = tokens.next() else {
        return Err(format!(
            "# {} without a metric name",
            keyword.unwrap_or_default()
        ));
    };
    if !is_metric_name(name) {
        return Err(format!("invalid metric name \"{name}\""));
    }
    if keyword == Some("TYPE") {
        match tokens.next() {
            Some(t) if TYPES.contains(&t) => {}
            Some(t) => {
                return Err(format!(
                    "unknown metric type \"{t}\" for {name} (expected one of {})",
                    TYPES.join(", ")
                ));
            }
            None => return Err(format!("# TYPE {name} without a type")),
        }
        if let Some(extra) = tokens.next() {
            return Err(format!("unexpected \"{extra}\" after # TYPE {name}"));
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

fn parse_sample(line: &str) -> Result<PromSample, String> {
    let mut c = Cursor { s: line, pos: 0 };
    let name = c.take_while(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':');
    if !is_metric_name(name) {
        return Err(format!(
            "expected a metric name, found {}",
            Cursor { s: line, pos: 0 }.describe_next()
        ));
    }
    c.skip_blanks();
    let mut labels = BTreeMap::new();
    if c.peek() == Some('{') {
        c.bump();
        parse_labels(&mut c, &mut labels)?;
        c.skip_blanks();
    } else if c.pos == name.len() && c.peek().is_some() {
        return Err(format!(
            "invalid character {} in metric name after \"{name}\"",
            c.describe_next()
        ));
    }
    let value_text = c.take_while(|ch| !is_blank(ch));
    if value_text.is_empty() {
        return Err(format!("missing value for {name}"));
    }
    let value = parse_value(value_text)
        .ok_or_else(|| format!("invalid value \"{value_text}\" for {name}"))?;
    c.skip_blanks();
    let ts_text = c.take_while(|ch| !is_blank(ch));
    let timestamp_ms = if ts_text.is_empty() {
        None
    } else {
        Some(
            ts_text
                .parse::<i64>()
                .map_err(|_| format!("invalid timestamp \"{ts_text}\" for {name}"))?,
        )
    };
    c.skip_blanks();
    if !c.rest().is_empty() {
        return Err(format!(
            "unexpected \"{}\" after the sample of {name}",
            c.rest()
        ));
    }
    Ok(PromSample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `l="v", ...}` (the `{` is already consumed).
fn parse_labels(c: &mut Cursor<'_>, labels: &mut BTreeMap<String, String>) -> Result<(), String> {
    loop {
        c.skip_blanks();
        if c.peek() == Some('}') {
            c.bump();
            return Ok(());
        }
        let name = c.take_while(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if name.is_empty() || name.starts_with(|ch: char| ch.is_ascii_digit()) {
            return Err(format!(
                "expected a label name or }}, found {}",
                if name.is_empty() {
                    c.describe_next()
                } else {
                    format!("\"{name}\"")
                }
            ));
        }
        c.skip_blanks();
        if c.bump() != Some('=') {
            return Err(format!("expected = after label name \"{name}\""));
        }
        c.skip_blanks();
        if c.bump() != Some('"') {
            return Err(format!("expected \" to open the value of label \"{name}\""));
        }
        let value = parse_label_value(c, name)?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label \"{name}\""));
        }
        c.skip_blanks();
        match c.bump() {
            Some(',') => {}
            Some('}') => return Ok(()),
            Some(other) => {
                return Err(format!(
                    "expected , or }} after label \"{name}\", found {other:?}"
                ));
            }
            None => return Err("unterminated label set (missing })".to_owned()),
        }
    }
}

/// Reads a label value up to its closing quote (the opening one is consumed).
fn parse_label_value(c: &mut Cursor<'_>, name: &str) -> Result<String, String> {
    let mut value = String::new();
    loop {
        match c.bump() {
            None => return Err(format!("unterminated value of label \"{name}\"")),
            Some('"') => return Ok(value),
            Some('\\') => match c.bump() {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                Some(other) => {
                    return Err(format!(
                        "invalid escape \\{other} in value of label \"{name}\""
                    ));
                }
                None => return Err(format!("unterminated value of label \"{name}\"")),
            },
            Some(ch) => value.push(ch),
        }
    }
}

/// A sample value: a float, or `NaN`, `+Inf`, `-Inf` (case-insensitive).
fn parse_value(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "+inf" | "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        // Rust also reads "infinity"; Prometheus does not write it, keep it.
        _ => s.parse::<f64>().ok(),
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
