//! Settings of the HTTP driver (`driver = "http"`, and `driver =
//! "prometheus"`, which reads as http with `format = "prometheus"`): the URL,
//! the body format and the values to pick, credentials and a private CA.
//! The JSON `metrics` list and its validation are shared with the exec
//! driver, whose output is read the same way.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source, check_http_url, check_metric_name};
use crate::drivers::settings::{DriverTable, Settings};

/// A device read with an HTTP GET.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// How the response body is read.
    pub format: HttpFormat,
    /// The values to extract; non-empty for [`HttpFormat::Json`], empty for
    /// [`HttpFormat::Prometheus`].
    pub metrics: Vec<JsonMetric>,
    /// Credentials sent with every request.
    pub auth: HttpAuth,
    /// A CA certificate (PEM) trusted besides the system roots, for devices
    /// with certificates of a private CA.
    pub ca: Option<PathBuf>,
}

/// HTTP credentials.
#[derive(Clone, PartialEq, Default)]
pub enum HttpAuth {
    #[default]
    None,
    /// `Authorization: Basic` (`username`, `password`).
    Basic { username: String, password: String },
    /// `Authorization: Bearer` (`bearer_token`).
    Bearer(String),
}

impl std::fmt::Debug for HttpAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::None => f.write_str("None"),
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            HttpAuth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Body format of an HTTP device or an exec program's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpFormat {
    /// A JSON document; values are picked by JSON pointer.
    Json,
    /// Prometheus text exposition format 0.0.4; every sample is kept.
    Prometheus,
}

/// One value picked out of a JSON document.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonMetric {
    pub name: String,
    /// An RFC 6901 JSON pointer, e.g. `/power` (`""` is the whole document).
    pub pointer: String,
    /// Empty when not given.
    pub unit: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: Spanned<String>,
    format: Option<HttpFormat>,
    metrics: Option<Spanned<Vec<Spanned<RawJsonMetric>>>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    bearer_token: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
}

/// `driver = "prometheus"`: an HTTP scrape without `format` or `metrics`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    url: Spanned<String>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    bearer_token: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJsonMetric {
    name: Spanned<String>,
    pointer: Spanned<String>,
    unit: Option<String>,
}

/// Validates the `metrics` of a JSON/Prometheus body (http and exec).
pub(crate) fn json_metrics(
    src: &Source<'_>,
    key: &str,
    span: Range<usize>,
    driver: &str,
    format: HttpFormat,
    metrics: &Option<Spanned<Vec<Spanned<RawJsonMetric>>>>,
) -> Result<Vec<JsonMetric>, ConfigError> {
    let mut out = Vec::new();
    match (format, metrics) {
        (HttpFormat::Prometheus, Some(m)) => {
            return Err(src.error(
                m.span(),
                format!("{key}.metrics"),
                "`metrics` is not used with format \"prometheus\" (every sample is kept)",
            ));
        }
        (HttpFormat::Prometheus, None) => {}
        (HttpFormat::Json, None) => {
            return Err(src.error(
                span,
                key,
                format!("missing key `metrics` for driver {driver} with format \"json\""),
            ));
        }
        (HttpFormat::Json, Some(list)) => {
            if list.get_ref().is_empty() {
                return Err(src.error(
                    list.span(),
                    format!("{key}.metrics"),
                    "at least one metric is required",
                ));
            }
            let mut seen = HashMap::new();
            for (i, m) in list.get_ref().iter().enumerate() {
                let m = m.get_ref();
                let mkey = format!("{key}.metrics[{i}]");
                check_metric_name(src, &mut seen, &m.name, &format!("{mkey}.name"))?;
                let pointer = check_pointer(src, &m.pointer, &format!("{mkey}.pointer"))?;
                out.push(JsonMetric {
                    name: m.name.get_ref().clone(),
                    pointer,
                    unit: m.unit.clone().unwrap_or_default(),
                });
            }
        }
    }
    Ok(out)
}

pub(crate) fn check_pointer(
    src: &Source<'_>,
    pointer: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let p = pointer.get_ref();
    if !p.is_empty() && !p.starts_with('/') {
        return Err(src.error(
            pointer.span(),
            key,
            format!("invalid json pointer \"{p}\" (expected \"\" or a path starting with /)"),
        ));
    }
    Ok(p.clone())
}

impl RawHttp {
    fn validate(
        self,
        src: &Source<'_>,
        key: &str,
        span: Range<usize>,
        forced: Option<HttpFormat>,
    ) -> Result<HttpConfig, ConfigError> {
        let url = check_http_url(src, &self.url, &format!("{key}.url"))?;
        let format = forced.or(self.format).unwrap_or(HttpFormat::Json);
        let metrics = json_metrics(src, key, span, "http", format, &self.metrics)?;
        let auth = match (self.username, self.password, self.bearer_token) {
            (None, None, None) => HttpAuth::None,
            (Some(u), Some(p), None) => HttpAuth::Basic {
                username: u.into_inner(),
                password: p.into_inner(),
            },
            (Some(u), None, None) => {
                return Err(src.error(
                    u.span(),
                    format!("{key}.username"),
                    "basic auth needs `password` too",
                ));
            }
            (None, Some(p), _) => {
                return Err(src.error(
                    p.span(),
                    format!("{key}.password"),
                    "basic auth needs `username` too",
                ));
            }
            (None, None, Some(t)) if t.get_ref().is_empty() => {
                return Err(src.error(
                    t.span(),
                    format!("{key}.bearer_token"),
                    "bearer token must not be empty",
                ));
            }
            (None, None, Some(t)) => HttpAuth::Bearer(t.into_inner()),
            (Some(_), _, Some(t)) => {
                return Err(src.error(
                    t.span(),
                    format!("{key}.bearer_token"),
                    "use either `username`/`password` or `bearer_token`, not both",
                ));
            }
        };
        let ca = self
            .ca
            .as_ref()
            .map(|ca| src.path(ca, &format!("{key}.ca")))
            .transpose()?;
        if ca.is_some() && !url.starts_with("https://") {
            return Err(src.error(
                self.url.span(),
                format!("{key}.url"),
                "`ca` is set but the url is not https://",
            ));
        }
        Ok(HttpConfig {
            url,
            format,
            metrics,
            auth,
            ca,
        })
    }
}

impl Settings for HttpConfig {
    const SECRETS: &'static [&'static str] = &["password", "bearer_token"];

    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let (src, key, span) = (table.src, table.key, table.span.clone());
        if table.driver.get_ref() == "prometheus" {
            let raw: RawPrometheus = table.deserialize()?;
            let raw = RawHttp {
                url: raw.url,
                format: None,
                metrics: None,
                username: raw.username,
                password: raw.password,
                bearer_token: raw.bearer_token,
                ca: raw.ca,
            };
            return raw.validate(src, key, span, Some(HttpFormat::Prometheus));
        }
        let raw: RawHttp = table.deserialize()?;
        raw.validate(src, key, span, None)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::drivers::DriverConfig;
    use crate::drivers::testing::{device, err};

    #[test]
    fn prometheus_auth_and_ca() {
        let d = device(
            "driver = \"prometheus\"\nurl = \"https://h:9100/metrics\"\nusername = \"u\"\npassword = \"p\"\nca = \"ca.pem\"\n",
        )
        .expect("valid");
        let DriverConfig::Http(h) = d else {
            panic!("{d:?}")
        };
        assert_eq!(h.format, HttpFormat::Prometheus);
        assert_eq!(
            h.auth,
            HttpAuth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(h.ca.as_deref(), Some(Path::new("conf/ca.pem")));
        let e = err("driver = \"prometheus\"\nurl = \"http://h/\"\nformat = \"json\"\n");
        assert!(
            e.contains("unknown key `format` for driver prometheus"),
            "{e}"
        );
        let e = err(
            "driver = \"http\"\nurl = \"http://h/\"\nformat = \"prometheus\"\nusername = \"u\"\nbearer_token = \"t\"\n",
        );
        assert!(
            e.contains("devices[0].password: ") || e.contains("not both"),
            "{e}"
        );
        let e = err(
            "driver = \"http\"\nurl = \"http://h/\"\nformat = \"prometheus\"\nca = \"x.pem\"\n",
        );
        assert!(e.contains("not https://"), "{e}");
    }
}
