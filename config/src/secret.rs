//! Secrets: [`Secret`], a string whose `Debug` and `Display` print
//! [`REDACTED`], and [`read_secret_file`], which reads the value of a
//! `<key>_file` twin (a password kept out of the config file).

use std::path::Path;

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

/// A secret string: printing it (`{}`, `{:?}`) shows [`REDACTED`]; only
/// [`Secret::expose`] gives the value, at the one place it is used.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the protocol that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Reads a secret file (at most [`crate::MAX_SECRET_BYTES`]): its whole content without one trailing newline
/// (`echo secret > file` writes one). The error names the file, never its
/// content.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let mut text = crate::source::read_limited(path, crate::source::MAX_SECRET_BYTES)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(
            format!("{s} {s:?} {:?}", Some(&s)),
            "<redacted> <redacted> Some(<redacted>)"
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn an_endless_secret_file_is_refused_naming_it() {
        let e = read_secret_file(Path::new("/dev/zero")).expect_err("refused");
        assert!(
            e.contains("/dev/zero") && e.contains("larger than 65536 bytes"),
            "{e}"
        );
    }
}
