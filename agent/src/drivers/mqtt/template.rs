//! Names built from the topic an MQTT message arrived on (a topic entry's
//! `device` and `metric`): parsed once from the config, rendered for every
//! message.

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` in \"{0}\"")]
    Unclosed(String),
    /// `{n}` with `n` above the filter's number of wildcards.
    #[error("{{{level}}} in \"{text}\": the filter has {captures} wildcard level(s)")]
    NoSuchLevel {
        level: usize,
        text: String,
        captures: usize,
    },
    #[error(
        "unknown field {{{field}}} in \"{text}\" (expected {{name}}, {{topic}} or {{1}}, {{2}}, ...)"
    )]
    UnknownField { field: String, text: String },
    #[error("must not be empty")]
    Empty,
}

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
    pub fn parse(text: &str, captures: usize) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
            let field = &after[..close];
            parts.push(match field {
                "name" => TemplatePart::Name,
                "topic" => TemplatePart::Topic,
                n => match n.parse::<usize>() {
                    Ok(i) if (1..=captures).contains(&i) => TemplatePart::Capture(i),
                    Ok(i) => {
                        return Err(TemplateError::NoSuchLevel {
                            level: i,
                            text: text.to_owned(),
                            captures,
                        });
                    }
                    Err(_) => {
                        return Err(TemplateError::UnknownField {
                            field: field.to_owned(),
                            text: text.to_owned(),
                        });
                    }
                },
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(TemplateError::Empty);
        }
        Ok(Template(parts))
    }

    /// Fills in the fields; `captures[0]` is `{1}`. The result may be empty
    /// (`{1}` on an empty topic level): the caller checks.
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

/// The template as written in the config.
impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.0 {
            match part {
                TemplatePart::Text(t) => f.write_str(t)?,
                TemplatePart::Name => f.write_str("{name}")?,
                TemplatePart::Topic => f.write_str("{topic}")?,
                TemplatePart::Capture(i) => write!(f, "{{{i}}}")?,
            }
        }
        Ok(())
    }
}
