//! Settings of the exec driver (`driver = "exec"`): the program, its
//! arguments and environment, and how its output is read (the HTTP
//! driver's body formats and `metrics` list).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source};
use crate::drivers::http::{HttpFormat, JsonMetric, RawJsonMetric, json_metrics};
use crate::drivers::settings::{DriverTable, Settings};

/// A program run on every poll (no shell), its stdout parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// The program: a path, or a name looked up in `PATH`.
    pub command: PathBuf,
    pub args: Vec<String>,
    /// The program's whole environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    pub format: HttpFormat,
    /// As for [`HttpConfig::metrics`](crate::drivers::http::HttpConfig::metrics).
    pub metrics: Vec<JsonMetric>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: Spanned<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    format: Option<HttpFormat>,
    metrics: Option<Spanned<Vec<Spanned<RawJsonMetric>>>>,
}

impl RawExec {
    fn validate(
        self,
        src: &Source<'_>,
        key: &str,
        span: Range<usize>,
    ) -> Result<ExecConfig, ConfigError> {
        let text = self.command.get_ref();
        if text.trim().is_empty() {
            return Err(src.error(
                self.command.span(),
                format!("{key}.command"),
                "must not be empty",
            ));
        }
        // A bare name is looked up in PATH; a path is relative to the file.
        let command = if text.contains('/') {
            src.path(&self.command, &format!("{key}.command"))?
        } else {
            PathBuf::from(text)
        };
        let format = self.format.unwrap_or(HttpFormat::Json);
        let metrics = json_metrics(src, key, span, "exec", format, &self.metrics)?;
        Ok(ExecConfig {
            command,
            args: self.args.unwrap_or_default(),
            env: self.env.unwrap_or_default(),
            format,
            metrics,
        })
    }
}

impl Settings for ExecConfig {
    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawExec = table.deserialize()?;
        raw.validate(table.src, table.key, table.span.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::drivers::DriverConfig;
    use crate::drivers::testing::{device, err};

    #[test]
    fn exec_command_args_env() {
        let d = device(
            "driver = \"exec\"\ncommand = \"bin/probe\"\nargs = [\"-x\"]\nenv = { LANG = \"C\" }\nformat = \"prometheus\"\n",
        )
        .expect("valid");
        let DriverConfig::Exec(x) = d else {
            panic!("{d:?}")
        };
        assert_eq!(x.command, Path::new("conf/bin/probe"));
        assert_eq!(x.env.get("LANG").map(String::as_str), Some("C"));
        let d = device("driver = \"exec\"\ncommand = \"true\"\nformat = \"prometheus\"\n")
            .expect("valid");
        let DriverConfig::Exec(x) = d else {
            panic!("{d:?}")
        };
        assert_eq!(x.command, Path::new("true"));
        let e = err("driver = \"exec\"\ncommand = \"x\"\n");
        assert!(e.contains("missing key `metrics` for driver exec"), "{e}");
    }
}
