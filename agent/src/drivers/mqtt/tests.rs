//! Tests of the MQTT driver's parts: topic matching, payloads, names
//! rendered empty, and a refused broker (`tests/tests/drivers_mqtt.rs`
//! runs it against real Mosquitto brokers).

use super::*;

fn topic(filter: &str, metric: Option<&str>, format: PayloadFormat) -> MqttTopic {
    MqttTopic {
        filter: filter.into(),
        device: Template::parse("{name}/{1}", 1).expect("template"),
        metric: metric.map(|m| Template::parse(m, 1).expect("template")),
        format,
        pointer: "/v".into(),
        unit: String::new(),
    }
}

#[test]
fn topics_match_filters() {
    assert_eq!(
        match_topic("plant/+/temp", "plant/b1/temp"),
        Some(vec!["b1"])
    );
    assert_eq!(match_topic("plant/+/temp", "plant/b1/hum"), None);
    assert_eq!(match_topic("plant/+/temp", "plant/b1/temp/x"), None);
    assert_eq!(match_topic("plant/#", "plant/a/b"), Some(vec!["a/b"]));
    assert_eq!(match_topic("plant/#", "plant"), Some(vec![""]));
    assert_eq!(match_topic("a/b", "a/b"), Some(vec![]));
    assert_eq!(match_topic("+/b", "/b"), Some(vec![""]));
    assert_eq!(match_topic("#", "$SYS/x"), None);
}

#[test]
fn payloads_parse_or_say_why() {
    let t = topic("p/+/t", Some("temp"), PayloadFormat::Number);
    let s = payload_samples(&t, "plant", "p/a/t", &["a"], b" 21.5\n");
    assert_eq!(s[0].value, Value::F64(21.5));
    let s = payload_samples(&t, "plant", "p/a/t", &["a"], b"42");
    assert_eq!(s[0].value, Value::I64(42));
    let s = payload_samples(&t, "plant", "p/a/t", &["a"], b"hot");
    assert!(
        matches!(&s[0].value, Value::Failed { message, .. } if message == "payload on p/a/t: not a number: \"hot\""),
        "{:?}",
        s[0]
    );
    let t = topic("p/+/t", Some("{1}_v"), PayloadFormat::Json);
    let s = payload_samples(&t, "plant", "p/a/t", &["a"], br#"{"v": 3}"#);
    assert_eq!((s[0].metric.as_str(), &s[0].value), ("a_v", &Value::I64(3)));
    let s = payload_samples(&t, "plant", "p/a/t", &["a"], br#"{"v": 3"#);
    assert!(
        matches!(&s[0].value, Value::Failed { message, .. } if message.starts_with("payload on p/a/t: invalid json at line 1 column 7")),
        "{:?}",
        s[0]
    );
    let t = topic("p/+/t", None, PayloadFormat::Prometheus);
    let s = payload_samples(&t, "plant", "p/a/t", &["a"], b"x{k=\"v\"} 1\ny 2\n");
    assert_eq!(s.len(), 2);
    let s = payload_samples(&t, "plant", "p/a/t", &["a"], b"x{k=} 1\n");
    assert!(matches!(&s[0].value, Value::Failed { .. }), "{:?}", s[0]);
}

#[test]
fn an_empty_rendered_name_is_a_failed_reading_of_the_device() {
    let mut t = topic("p/+/t", Some("{1}"), PayloadFormat::Number);
    t.device = Template::parse("{1}", 1).expect("template");
    let sample = |t: &MqttTopic, topic: &str, level: &str| {
        let mut s = payload_samples(t, "plant", topic, &[level], b"2");
        s[0].device = Some(t.device.render("plant", topic, &[level]));
        valid_names(s.remove(0), t, "plant", topic)
    };
    let good = sample(&t, "p/a/t", "a");
    assert_eq!(
        (good.device.as_deref(), good.metric.as_str()),
        (Some("a"), "a")
    );
    assert_eq!(good.value, Value::I64(2));
    let bad = sample(&t, "p//t", "");
    assert_eq!(bad.device.as_deref(), Some("plant"));
    assert_eq!(bad.metric, INVALID_SERIES_METRIC);
    assert_eq!(
        bad.value,
        Value::Failed {
            kind: FailureKind::Error,
            message: "payload on p//t: the device template \"{1}\" renders an empty name".into()
        }
    );
    t.device = Template::parse("{name}-{1}", 1).expect("template");
    let bad = sample(&t, "p//t", "");
    assert_eq!(bad.device.as_deref(), Some("plant-"));
    assert_eq!(
        bad.value,
        Value::Failed {
            kind: FailureKind::Error,
            message: "payload on p//t: the metric template \"{1}\" renders an empty name".into()
        }
    );
    assert_eq!(
        Template::parse("a{name}/{topic}-{1}", 1).map(|t| t.to_string()),
        Ok("a{name}/{topic}-{1}".to_string())
    );
}

#[tokio::test]
async fn refused_broker_is_a_clear_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = MqttConfig {
        broker: addr.to_string(),
        client_id: None,
        username: None,
        password: None,
        qos: 0,
        topics: vec![topic("p/+/t", Some("temp"), PayloadFormat::Number)],
    };
    let mut d = MqttDriver::new(&cfg, "plant", Duration::from_secs(2));
    let e = d.poll().await.expect_err("refused");
    assert_eq!(e.message, format!("mqtt broker {addr}: connection refused"));
}
