//! File name patterns for `include = [...]`: `*` (any run of characters)
//! and `?` (one character) in the last component of a path; the matches
//! come sorted by name.

use std::path::{Path, PathBuf};

/// The files `pattern` names, relative to `dir`: the file itself when the
/// pattern has no wildcard, else the matching files, sorted. A wildcard
/// before the last `/` is an error.
pub fn expand_glob(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let (parent, name) = match pattern.rsplit_once('/') {
        Some((parent, name)) => (dir.join(parent), name),
        None => (dir.to_owned(), pattern),
    };
    if pattern
        .rsplit_once('/')
        .is_some_and(|(p, _)| p.contains(['*', '?']))
    {
        return Err(format!(
            "pattern \"{pattern}\": wildcards are allowed in the file name only"
        ));
    }
    if !name.contains(['*', '?']) {
        return Ok(vec![parent.join(name)]);
    }
    // A pattern next to a main file named without a directory lists the
    // current one (`read_dir("")` fails); the matches stay relative.
    let listed = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent.as_path()
    };
    let entries = std::fs::read_dir(listed).map_err(|e| {
        format!(
            "pattern \"{pattern}\": cannot list {}: {e}",
            listed.display()
        )
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", listed.display()))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if matches(name.as_bytes(), file_name.as_bytes())
            && entry
                .file_type()
                .is_ok_and(|t| t.is_file() || t.is_symlink())
        {
            out.push(parent.join(file_name));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether the file name `name` matches the file-name pattern `pattern`
/// as [`expand_glob`] matches it (for a watcher of an include's directory).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    matches(pattern.as_bytes(), name.as_bytes())
}

/// Whether `name` matches `pattern` (`*` and `?`); a leading `.` must be
/// matched literally, as shells do.
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches(b"*.toml", b"a.toml"));
        assert!(matches(b"a?c*", b"abcdef"));
        assert!(!matches(b"*.toml", b"a.toml.bak"));
        assert!(!matches(b"*.toml", b".hidden.toml"));
        assert!(matches(b"*a*b", b"xaxxab"));
    }
}
