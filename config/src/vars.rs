//! `${VAR}` in config strings: [`expand`] replaces `${NAME}` with the
//! variable's value, `${NAME:-default}` with the default when the variable
//! is unset or empty, and `$$` with a literal `$`. Any other `$` stays as it
//! is, so a `$` in a password needs no escaping unless `{` or `$` follows it.
//! A default may hold references itself (`${A:-${B:-x}}`), up to
//! [`MAX_NESTING`] deep; it is expanded only when it is used, as a shell
//! does.

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
    #[error("${{...}} nested more than {MAX_NESTING} deep in a default")]
    TooDeep,
}

/// How deep `${A:-${B:-...}}` may nest.
pub const MAX_NESTING: usize = 8;

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
            VarError::TooDeep => "${...} nested too deep in this secret's value",
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
    expand_into(text, lookup, 0, &mut out)?;
    Ok(Cow::Owned(out))
}

/// The position in `body` (what follows a `${`) of the `}` that closes it:
/// a `${` inside opens a nested reference, `$$` is a literal `$`.
fn closing_brace(body: &str) -> Option<usize> {
    let b = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'$', Some(b'$')) => i += 1,
            (b'$', Some(b'{')) => {
                depth += 1;
                i += 1;
            }
            (b'}', _) if depth == 0 => return Some(i),
            (b'}', _) => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// [`expand`] of `text`, appended to `out`; `depth` references around it.
fn expand_into(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
    out: &mut String,
) -> Result<(), VarError> {
    if depth > MAX_NESTING {
        return Err(VarError::TooDeep);
    }
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or(VarError::Unterminated)?;
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
                (Some(v), Some(d)) if v.is_empty() => expand_into(d, lookup, depth + 1, out)?,
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => expand_into(d, lookup, depth + 1, out)?,
                (None, None) => return Err(VarError::Unset(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(())
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
        // Defaults may hold references, expanded only when used.
        assert_eq!(x("${NOPE:-${HOST}}:161"), Ok("h1:161".into()));
        assert_eq!(x("${NOPE:-a${NADA:-${HOST}}b}"), Ok("ah1b".into()));
        assert_eq!(x("${HOST:-${NOPE}}"), Ok("h1".into()));
        assert_eq!(x("${NOPE:-${ALSO}}"), Err(VarError::Unset("ALSO".into())));
        assert_eq!(x("${NOPE:-$${HOST}}"), Ok("${HOST}".into()));
        assert_eq!(x("${NOPE:-x}}"), Ok("x}".into()));
        assert_eq!(x("${NOPE:-${HOST}"), Err(VarError::Unterminated));
        let deep = format!("{}x{}", "${N:-".repeat(20), "}".repeat(20));
        assert_eq!(x(&deep), Err(VarError::TooDeep));
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
