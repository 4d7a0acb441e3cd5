//! Records the git commit the binaries are built from, for
//! `tributary_process::build::COMMIT` (`src/build.rs`).
//!
//! The commit is, in order: `$TRIBUTARY_GIT_COMMIT` when it is set (a
//! packager building from a tarball, or from inside another repository,
//! says what the source is), else `git rev-parse --short=12 HEAD` in this
//! source tree, else `unknown`. A working tree with uncommitted changes is
//! not marked: knowing that reliably would mean re-running this script, and
//! rebuilding every binary, on each edit.
//!
//! Cargo re-runs this script only when HEAD moves: it watches the `HEAD`
//! file of the git directory, the directory holding the branch's ref and
//! `packed-refs`, so a commit or a checkout updates the version and a plain
//! edit does not rebuild anything.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable that overrides what git says.
const OVERRIDE: &str = "TRIBUTARY_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={OVERRIDE}");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());

    let commit = match std::env::var(OVERRIDE) {
        Ok(value) if !value.trim().is_empty() => {
            let value = value.trim().to_owned();
            if is_plain(&value) {
                value
            } else {
                println!(
                    "cargo:warning={OVERRIDE}={value:?} is not a commit \
                     (letters, digits, `.`, `_`, `-`, at most 64); using `unknown`"
                );
                "unknown".to_owned()
            }
        }
        _ => {
            watch_git(&manifest_dir);
            git(&manifest_dir, &["rev-parse", "--short=12", "HEAD"])
                .filter(|c| is_plain(c))
                .unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=TRIBUTARY_BUILD_COMMIT={commit}");
}

/// Asks cargo to re-run this script when HEAD moves. Outside a git tree
/// nothing is watched (and the commit is `unknown`).
fn watch_git(dir: &Path) {
    let Some(git_dir) = git(dir, &["rev-parse", "--git-dir"]) else {
        return;
    };
    let git_dir = dir.join(git_dir);
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    let Some(common) = git(dir, &["rev-parse", "--git-common-dir"]) else {
        return;
    };
    let common = dir.join(common);
    let packed = common.join("packed-refs");
    if packed.exists() {
        println!("cargo:rerun-if-changed={}", packed.display());
    }
    // On a branch, HEAD names a ref such as `refs/heads/main`; a commit
    // rewrites (or, after `git gc`, creates) that file, so its directory is
    // watched: cargo looks at every file under a watched directory.
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        let ref_dir = Path::new(&reference).parent().map(|p| common.join(p));
        if let Some(ref_dir) = ref_dir.filter(|d| d.is_dir()) {
            println!("cargo:rerun-if-changed={}", ref_dir.display());
        }
    }
}

/// `git ARGS` run in `dir`: its first line of output, or `None` if git is
/// missing or fails (not a git tree).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// Whether `s` can go into a version string and a metric label as it is.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
