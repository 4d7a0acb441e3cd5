//! `${VAR}` in config strings: [`expand`] replaces `${NAME}` with the
//! variable's value, `${NAME:-default}` with the default when the variable
//! is unset or empty, and `$$` with a literal `$`. Any other `$` stays as it
//! is, so a `$` in a password needs no escaping unless `{` or `$` follows it.

use std::borrow::Cow;

/// Why a string's variables could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    #[error("environment variable {0} is not set (use ${{{0}:-default}} for a default)")]
    Unset(String),
    #[error(
        "unterminated ${{ (expected ${{NAME}} or ${{NAME:-default}}; write $$ for a literal $)"
    )]
    Unterminated,
    #[error("invalid variable name \"{0}\" (expected [A-Za-z_][A-Za-z0-9_]*)")]
    BadName(String),
}

impl VarError {
    /// The message for an error in a secret's value: what went wrong,
    /// without any part of the value (a `${` may be part of the secret).
    pub fn secret_message(&self, value: &str) -> String {
        // A value that is the reference and nothing else holds no part of
        // the secret: the variable is named, as everywhere else.
        if let VarError::Unset(name) = self
            && value.trim() == format!("${{{name}}}")
        {
            return self.to_string();
        }
        let what = match self {
            VarError::Unset(_) | VarError::BadName(_) => {
                "a ${...} in this secret's value is not a set environment variable"
            }
            VarError::Unterminated => "an unterminated ${ in this secret's value",
        };
        format!("{what} (the value is not shown; write $$ for a literal $)")
    }
}

/// Expands `${NAME}`, `${NAME:-default}` and `$$` in `text`, looking
/// variables up with `lookup` (the process environment in the binaries).
pub fn expand<'a>(
    text: &'a str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Cow<'a, str>, VarError> {
    if !text.contains('$') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(VarError::Unterminated)?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(VarError::BadName(name.to_owned()));
            }
            match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(VarError::Unset(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// Looks a variable up in the process environment.
pub fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("h1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_defaults_and_dollars() {
        let x = |s| expand(s, &env).map(|c| c.into_owned());
        assert_eq!(x("plain"), Ok("plain".into()));
        assert_eq!(x("${HOST}:161"), Ok("h1:161".into()));
        assert_eq!(x("${NOPE:-d}/${HOST:-x}"), Ok("d/h1".into()));
        assert_eq!(x("${EMPTY:-d}|${EMPTY}|"), Ok("d||".into()));
        assert_eq!(x("a$$b$c$"), Ok("a$b$c$".into()));
        assert_eq!(x("$${HOST}"), Ok("${HOST}".into()));
        assert_eq!(x("${NOPE}"), Err(VarError::Unset("NOPE".into())));
        assert_eq!(x("${HOST"), Err(VarError::Unterminated));
        assert_eq!(x("${1X}"), Err(VarError::BadName("1X".into())));
        let secret = VarError::Unset("ss".into()).secret_message("pa${ss}wd");
        assert!(!secret.contains("ss"), "{secret}");
        let whole = VarError::Unset("SNMP_COMMUNITY".into()).secret_message("${SNMP_COMMUNITY}");
        assert!(whole.contains("SNMP_COMMUNITY"), "{whole}");
        assert_eq!(
            VarError::Unset("P".into()).to_string(),
            "environment variable P is not set (use ${P:-default} for a default)"
        );
    }
}
