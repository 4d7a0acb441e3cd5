//! A scenario's report: the machine, the configuration, every number per
//! run and its median against the target, and the consistency checks;
//! printed as a table or as one JSON object.

use serde_json::{Map, Value, json};

use crate::sys::{Machine, load_average};

/// What a number must reach.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {}", fmt_num(t)),
            Target::AtMost(t) => format!("<= {}", fmt_num(t)),
        }
    }
}

/// One measured quantity, one value per run.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub runs: Vec<f64>,
    pub target: Option<Target>,
}

impl Metric {
    /// The median over runs (mean of the middle two for an even count).
    pub fn median(&self) -> Option<f64> {
        let mut v = self.runs.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    fn met(&self) -> Option<bool> {
        Some(self.target?.met(self.median()?))
    }
}

/// A consistency check: numbers that must agree (never a timing).
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// Everything one scenario found.
#[derive(Debug)]
pub struct Report {
    scenario: &'static str,
    machine: Machine,
    load_start: [f64; 3],
    load_end: Option<[f64; 3]>,
    config: Vec<(String, Value)>,
    metrics: Vec<Metric>,
    checks: Vec<Check>,
    notes: Vec<String>,
    tables: Vec<Table>,
}

/// Rows that say where a number came from (a scenario's per-item times):
/// printed after the checks, `shown` rows at most; all of them in JSON.
#[derive(Debug)]
struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    shown: usize,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            machine: Machine::detect(),
            load_start: load_average(),
            load_end: None,
            config: Vec::new(),
            metrics: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            tables: Vec::new(),
        }
    }

    pub fn config(&mut self, key: &str, value: impl Into<Value>) {
        self.config.push((key.to_owned(), value.into()));
    }

    /// Declares a metric (fixing its place in the table) before any run.
    pub fn declare(&mut self, name: &'static str, unit: &'static str, target: Option<Target>) {
        self.metrics.push(Metric {
            name,
            unit,
            runs: Vec::new(),
            target,
        });
    }

    /// Adds one run's value of `name` (declared or not).
    pub fn record(&mut self, name: &'static str, value: f64) {
        match self.metrics.iter_mut().find(|m| m.name == name) {
            Some(m) => m.runs.push(value),
            None => self.metrics.push(Metric {
                name,
                unit: "",
                runs: vec![value],
                target: None,
            }),
        }
    }

    pub fn check(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            ok,
            detail: detail.into(),
        });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Adds a table under `title`: rows of cells in `header`'s order.
    pub fn table(
        &mut self,
        title: impl Into<String>,
        header: &[&str],
        rows: Vec<Vec<String>>,
        shown: usize,
    ) {
        self.tables.push(Table {
            title: title.into(),
            header: header.iter().map(|&h| h.to_owned()).collect(),
            rows,
            shown,
        });
    }

    /// Stamps the load average at the end.
    pub fn finish(mut self) -> Report {
        self.load_end = Some(load_average());
        self
    }

    pub fn consistent(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// One JSON object: medians at the top level under their names, the
    /// per-run values and targets under `metrics`.
    pub fn to_json(&self) -> String {
        let mut top = Map::new();
        top.insert("scenario".into(), json!(self.scenario));
        top.insert("machine".into(), self.machine.to_json());
        top.insert(
            "load_average".into(),
            json!({ "start": self.load_start, "end": self.load_end }),
        );
        let config: Map<String, Value> = self.config.iter().cloned().collect();
        top.insert("config".into(), Value::Object(config));
        let mut metrics = Map::new();
        for m in &self.metrics {
            top.insert(m.name.into(), json!(m.median().map(round)));
            metrics.insert(
                m.name.into(),
                json!({
                    "unit": m.unit,
                    "median": m.median().map(round),
                    "runs": m.runs.iter().copied().map(round).collect::<Vec<_>>(),
                    "target": m.target.map(Target::describe),
                    "met": m.met(),
                }),
            );
        }
        top.insert("metrics".into(), Value::Object(metrics));
        top.insert(
            "checks".into(),
            Value::Array(
                self.checks
                    .iter()
                    .map(|c| json!({ "what": c.what, "ok": c.ok, "detail": c.detail }))
                    .collect(),
            ),
        );
        top.insert("consistent".into(), json!(self.consistent()));
        top.insert("notes".into(), json!(self.notes));
        if !self.tables.is_empty() {
            let tables = self
                .tables
                .iter()
                .map(|t| json!({ "title": t.title, "header": t.header, "rows": t.rows }))
                .collect();
            top.insert("tables".into(), Value::Array(tables));
        }
        Value::Object(top).to_string()
    }

    /// A plain-text table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let load = |l: [f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
        out.push_str(&format!("== {} ==\n", self.scenario));
        out.push_str(&format!("machine  {}\n", self.machine.describe()));
        out.push_str(&format!(
            "load     {} at start, {} at end (1/5/15 min; above ~0.3 other work shared the cores)\n",
            load(self.load_start),
            self.load_end.map(load).unwrap_or_default()
        ));
        let config: Vec<String> = self
            .config
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        out.push_str(&format!("config   {}\n\n", config.join(" ")));
        let rows: Vec<[String; 5]> = self
            .metrics
            .iter()
            .map(|m| {
                let median = m.median().map(fmt_num).unwrap_or_else(|| "-".into());
                let runs = m
                    .runs
                    .iter()
                    .map(|v| fmt_num(*v))
                    .collect::<Vec<_>>()
                    .join(" / ");
                let target = m.target.map(Target::describe).unwrap_or_default();
                let verdict = match m.met() {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "",
                };
                [
                    m.name.to_owned(),
                    format!("{median} {}", m.unit).trim().to_owned(),
                    runs,
                    target,
                    verdict.to_owned(),
                ]
            })
            .collect();
        let header = ["metric", "median", "runs", "target", ""].map(str::to_owned);
        out.push_str(&aligned(
            std::iter::once(&header[..]).chain(rows.iter().map(|r| &r[..])),
        ));
        if !self.checks.is_empty() {
            out.push('\n');
            for c in &self.checks {
                let verdict = if c.ok { "ok" } else { "FAILED" };
                out.push_str(&format!("check    {}: {verdict} ({})\n", c.what, c.detail));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("note     {n}\n"));
        }
        for t in &self.tables {
            out.push_str(&format!("\n{}\n", t.title));
            let rows = t.rows.iter().take(t.shown).map(|r| &r[..]);
            out.push_str(&aligned(std::iter::once(&t.header[..]).chain(rows)));
            if t.rows.len() > t.shown {
                out.push_str(&format!(
                    "({} more rows with --json)\n",
                    t.rows.len() - t.shown
                ));
            }
        }
        out
    }
}

/// Rows of cells as lines, each column as wide as its widest cell.
fn aligned<'a>(rows: impl Iterator<Item = &'a [String]> + Clone) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows.clone() {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Four significant digits are plenty for a measurement.
fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let digits = 4 - v.abs().log10().ceil() as i32;
    let scale = 10f64.powi(digits.max(0));
    (v * scale).round() / scale
}

/// `1,234,567` for large numbers, a few significant digits for small ones.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 10_000.0 {
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if n < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(12_345.0), "12,345");
        assert_eq!(fmt_num(523.44), "523.4");
        assert_eq!(fmt_num(3.456), "3.46");
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(fmt_num(0.0), "0.00");
    }

    #[test]
    fn medians_and_targets() {
        let mut r = Report::new("t");
        r.declare("x", "u", Some(Target::AtLeast(2.0)));
        for v in [1.0, 3.0, 2.5] {
            r.record("x", v);
        }
        r.check("agree", true, "1 = 1");
        let json: Value = serde_json::from_str(&r.to_json()).expect("valid json");
        assert_eq!(json["x"], json!(2.5));
        assert_eq!(json["metrics"]["x"]["met"], json!(true));
        assert_eq!(json["consistent"], json!(true));
        assert!(r.to_table().contains("met"));
    }

    #[test]
    fn tables_show_their_first_rows_and_json_has_all() {
        let mut r = Report::new("t");
        let rows = (0..5)
            .map(|i| vec![format!("q{i}"), i.to_string()])
            .collect();
        r.table("per query", &["query", "ms"], rows, 2);
        let text = r.to_table();
        assert!(
            text.contains("per query\nquery  ms\nq0     0\nq1     1\n(3 more rows with --json)"),
            "{text}"
        );
        assert!(!text.contains("q2"));
        let json: Value = serde_json::from_str(&r.to_json()).expect("valid json");
        assert_eq!(json["tables"][0]["rows"][4], json!(["q4", "4"]));
    }
}
