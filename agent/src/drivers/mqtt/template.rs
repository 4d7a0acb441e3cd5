//! Names built from the topic an MQTT message arrived on (a topic entry's
//! `device` and `metric`): parsed once from the config, rendered for every
//! message.

/// A name built from the topic a message arrived on: literal text with
/// `{name}` (the configured device name), `{topic}` (the whole topic) and
/// `{1}`, `{2}`, ... (the topic levels matched by the filter's `+` and `#`,
/// in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<TemplatePart>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Name,
    Topic,
    Capture(usize),
}

impl Template {
    /// Parses `text`; `captures` is how many wildcards the filter has.
    pub fn parse(text: &str, captures: usize) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in \"{text}\""))?;
            let field = &after[..close];
            parts.push(match field {
                "name" => TemplatePart::Name,
                "topic" => TemplatePart::Topic,
                n => match n.parse::<usize>() {
                    Ok(i) if (1..=captures).contains(&i) => TemplatePart::Capture(i),
                    Ok(i) => {
                        return Err(format!(
                            "{{{i}}} in \"{text}\": the filter has {captures} wildcard level(s)"
                        ));
                    }
                    Err(_) => {
                        return Err(format!(
                            "unknown field {{{field}}} in \"{text}\" (expected {{name}}, {{topic}} or {{1}}, {{2}}, ...)"
                        ));
                    }
                },
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Template(parts))
    }

    /// Fills in the fields; `captures[0]` is `{1}`.
    pub fn render(&self, name: &str, topic: &str, captures: &[&str]) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Name => out.push_str(name),
                TemplatePart::Topic => out.push_str(topic),
                TemplatePart::Capture(i) => {
                    out.push_str(captures.get(i - 1).copied().unwrap_or(""));
                }
            }
        }
        out
    }
}
