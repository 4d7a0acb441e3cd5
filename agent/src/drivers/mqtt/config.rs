//! Settings of the MQTT driver (`driver = "mqtt"`): the broker and its
//! credentials, and per topic filter how a message becomes samples (device
//! and metric templates, payload format). Topic filters are checked here
//! ([`check_topic_filter`]).

use serde::Deserialize;
use toml::Spanned;

use super::Template;
use crate::config::{ConfigError, Source};
use crate::drivers::http::check_pointer;
use crate::drivers::settings::{DriverTable, Settings, check_address};

/// An MQTT broker connection; the devices it feeds are named by topic.
#[derive(Clone, PartialEq)]
pub struct MqttConfig {
    /// `host:port` (plain TCP).
    pub broker: String,
    /// `tributary-<device>-<random>` unless set.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Subscription QoS, 0 or 1; 0 unless set.
    pub qos: u8,
    pub topics: Vec<MqttTopic>,
}

impl std::fmt::Debug for MqttConfig {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("qos", &self.qos)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// One subscription and how its messages become samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttTopic {
    /// An MQTT topic filter, e.g. `plant/+/temp`.
    pub filter: String,
    /// Device name of the samples; `{name}` plus one `/{n}` per wildcard
    /// unless set (`plant/+/temp` on device `plant` gives `plant/{1}`).
    pub device: Template,
    /// Metric name; required for `number` and `json`, unused (the payload
    /// names its metrics) for `prometheus`.
    pub metric: Option<Template>,
    pub format: PayloadFormat,
    /// JSON pointer into the payload for `json`.
    pub pointer: String,
    pub unit: String,
}

/// How an MQTT payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A plain number (`21.5`), or `true`/`false`.
    #[default]
    Number,
    /// A JSON document; the value at `pointer`.
    Json,
    /// Prometheus text; every sample.
    Prometheus,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    broker: Spanned<String>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    qos: Option<Spanned<u8>>,
    topics: Spanned<Vec<Spanned<RawMqttTopic>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttTopic {
    filter: Spanned<String>,
    device: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    format: Option<PayloadFormat>,
    pointer: Option<Spanned<String>>,
    unit: Option<String>,
}

/// Checks an MQTT topic filter; returns how many wildcard levels it has.
pub fn check_topic_filter(filter: &str) -> Result<usize, TopicFilterError> {
    if filter.is_empty() {
        return Err(TopicFilterError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let mut wildcards = 0;
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "+" => wildcards += 1,
            "#" if i + 1 == levels.len() => wildcards += 1,
            "#" => return Err(TopicFilterError::HashNotLast),
            l if l.contains(['+', '#']) => {
                return Err(TopicFilterError::WildcardInLevel(l.to_owned()));
            }
            _ => {}
        }
    }
    Ok(wildcards)
}

/// Why a text is not an MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicFilterError {
    #[error("must not be empty")]
    Empty,
    #[error("`#` must be the last level")]
    HashNotLast,
    /// A level holding a wildcard and other text, e.g. `b+`.
    #[error("level \"{0}\": `+` and `#` must stand alone in a level")]
    WildcardInLevel(String),
}

impl RawMqtt {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<MqttConfig, ConfigError> {
        let broker = check_address(src, &self.broker, &format!("{key}.broker"))?;
        if self.topics.get_ref().is_empty() {
            return Err(src.error(
                self.topics.span(),
                format!("{key}.topics"),
                "at least one topic is required",
            ));
        }
        let qos = match &self.qos {
            None => 0,
            Some(q) if *q.get_ref() <= 1 => *q.get_ref(),
            Some(q) => {
                return Err(src.error(
                    q.span(),
                    format!("{key}.qos"),
                    format!("unsupported qos {} (expected 0 or 1)", q.get_ref()),
                ));
            }
        };
        if let (Some(p), None) = (&self.password, &self.username) {
            return Err(src.error(
                p.span(),
                format!("{key}.password"),
                "`password` needs `username`",
            ));
        }
        let mut topics = Vec::new();
        for (i, t) in self.topics.get_ref().iter().enumerate() {
            let t = t.get_ref();
            let tkey = format!("{key}.topics[{i}]");
            let captures = check_topic_filter(t.filter.get_ref()).map_err(|e| {
                src.error(
                    t.filter.span(),
                    format!("{tkey}.filter"),
                    format!("invalid topic filter \"{}\": {e}", t.filter.get_ref()),
                )
            })?;
            let template = |value: &Spanned<String>, name: &str| {
                Template::parse(value.get_ref(), captures)
                    .map_err(|e| src.error(value.span(), format!("{tkey}.{name}"), e.to_string()))
            };
            let device = match &t.device {
                Some(d) => template(d, "device")?,
                None => {
                    let mut text = "{name}".to_owned();
                    for n in 1..=captures {
                        text.push_str(&format!("/{{{n}}}"));
                    }
                    Template::parse(&text, captures).map_err(|e| {
                        src.error(t.filter.span(), format!("{tkey}.device"), e.to_string())
                    })?
                }
            };
            let format = t.format.unwrap_or_default();
            let metric = match (&t.metric, format) {
                (Some(m), PayloadFormat::Prometheus) => {
                    return Err(src.error(
                        m.span(),
                        format!("{tkey}.metric"),
                        "`metric` is not used with format \"prometheus\" (the payload names its metrics)",
                    ));
                }
                (Some(m), _) => Some(template(m, "metric")?),
                (None, PayloadFormat::Prometheus) => None,
                (None, _) => {
                    return Err(src.error(
                        t.filter.span(),
                        tkey,
                        "missing key `metric` (the metric name, e.g. metric = \"temp\")",
                    ));
                }
            };
            let pointer = match (&t.pointer, format) {
                (Some(p), PayloadFormat::Json) => {
                    check_pointer(src, p, &format!("{tkey}.pointer"))?
                }
                (Some(p), _) => {
                    return Err(src.error(
                        p.span(),
                        format!("{tkey}.pointer"),
                        "`pointer` is only used with format \"json\"",
                    ));
                }
                (None, _) => String::new(),
            };
            topics.push(MqttTopic {
                filter: t.filter.get_ref().clone(),
                device,
                metric,
                format,
                pointer,
                unit: t.unit.clone().unwrap_or_default(),
            });
        }
        Ok(MqttConfig {
            broker,
            client_id: self.client_id.map(Spanned::into_inner),
            username: self.username.map(Spanned::into_inner),
            password: self.password.map(Spanned::into_inner),
            qos,
            topics,
        })
    }
}

impl Settings for MqttConfig {
    const SECRETS: &'static [&'static str] = &["password"];

    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawMqtt = table.deserialize()?;
        raw.validate(table.src, table.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::DriverConfig;
    use crate::drivers::testing::{device, err};

    #[test]
    fn mqtt_topics_and_templates() {
        let d = device(
            "driver = \"mqtt\"\nbroker = \"127.0.0.1:1883\"\n\
             topics = [{ filter = \"plant/+/temp\", metric = \"temp\", unit = \"C\" },\n\
             { filter = \"plant/+/state\", format = \"json\", pointer = \"/power\", metric = \"{1}_power\", device = \"boiler\" },\n\
             { filter = \"metrics/#\", format = \"prometheus\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Mqtt(m) = d else {
            panic!("{d:?}")
        };
        assert_eq!(m.qos, 0);
        let t = &m.topics[0];
        assert_eq!(
            t.device.render("d", "plant/boiler-1/temp", &["boiler-1"]),
            "d/boiler-1"
        );
        assert_eq!(
            t.metric.as_ref().map(|m| m.render("d", "x", &["a"])),
            Some("temp".into())
        );
        assert_eq!(
            m.topics[1]
                .metric
                .as_ref()
                .map(|m| m.render("d", "x", &["b2"])),
            Some("b2_power".into())
        );
        assert_eq!(m.topics[1].device.render("d", "x", &["b2"]), "boiler");
        assert_eq!(
            m.topics[2].device.render("d", "metrics/a/b", &["a/b"]),
            "d/a/b"
        );

        let e = err(
            "driver = \"mqtt\"\nbroker = \"h:1883\"\ntopics = [{ filter = \"a/#/b\", metric = \"m\" }]\n",
        );
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].topics[0].filter: invalid topic filter \"a/#/b\": `#` must be the last level"),
            "{e}"
        );
        let e = err(
            "driver = \"mqtt\"\nbroker = \"h:1883\"\ntopics = [{ filter = \"a/+\", metric = \"{2}\" }]\n",
        );
        assert!(
            e.contains("topics[0].metric: {2} in \"{2}\": the filter has 1"),
            "{e}"
        );
        let e = err("driver = \"mqtt\"\nbroker = \"h:1883\"\ntopics = [{ filter = \"a/+\" }]\n");
        assert!(e.contains("topics[0]: missing key `metric`"), "{e}");
        let e = err(
            "driver = \"mqtt\"\nbroker = \"h:1883\"\nqos = 2\ntopics = [{ filter = \"a\", metric = \"m\" }]\n",
        );
        assert!(e.contains("devices[0].qos: unsupported qos 2"), "{e}");
    }

    #[test]
    fn topic_filters() {
        assert_eq!(check_topic_filter("a/+/b/#"), Ok(2));
        assert!(check_topic_filter("a/b+").is_err());
        assert!(check_topic_filter("").is_err());
    }
}
