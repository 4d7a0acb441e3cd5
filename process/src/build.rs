//! What this binary was built from: the package version and the git commit
//! (recorded by `process/build.rs`: `$TRIBUTARY_GIT_COMMIT`, else
//! `git rev-parse --short=12 HEAD`, else `unknown`).
//!
//! Both binaries give [`VERSION_STRING`] to clap's `version`, so
//! `tributary-agent --version` prints `tributary-agent 0.1.0 (commit
//! 2e77ee3a1b2c)`; the build-info metric reads [`VERSION`] and [`COMMIT`].
//! Constants only: nothing here runs at start.

/// The workspace version (`Cargo.toml`'s `workspace.package.version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (12 hex digits), or what
/// `$TRIBUTARY_GIT_COMMIT` said at build time, or `unknown`.
pub const COMMIT: &str = env!("TRIBUTARY_BUILD_COMMIT");

/// `VERSION (commit COMMIT)`: what `--version` prints after the name.
pub const VERSION_STRING: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRIBUTARY_BUILD_COMMIT"),
    ")"
);

/// [`VERSION_STRING`], for callers that want a function.
pub fn version_string() -> &'static str {
    VERSION_STRING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_string_names_version_and_commit() {
        assert_eq!(version_string(), format!("{VERSION} (commit {COMMIT})"));
        assert!(!COMMIT.is_empty());
        assert!(
            COMMIT
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "{COMMIT:?}"
        );
    }
}
