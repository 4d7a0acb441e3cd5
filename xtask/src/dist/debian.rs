//! The Debian metadata of a package: `DEBIAN/control` (with `Depends` from
//! `dpkg-shlibdeps`), `md5sums`, the machine-readable `copyright`, the
//! native `changelog`, and a man page made from the binary's `--help`.
//! Text only; the files are laid out by `dist/mod.rs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::{Spec, capture, set_mode, write};
use crate::Workspace;

/// `Depends` when dpkg-dev's `dpkg-shlibdeps` is not installed: what it
/// computed for both binaries on Debian 12 (glibc 2.36, Rust 1.88). Both
/// link only libc and libgcc_s (SQLite is bundled, TLS is rustls).
pub const FALLBACK_DEPENDS: &str = "libc6 (>= 2.34), libgcc-s1 (>= 4.2)";

/// Who the packages say maintains them.
const MAINTAINER: &str = "Tributary authors <maintainers@example.invalid>";

/// The source package name both binary packages come from.
const SOURCE: &str = "tributary";

/// What every package of one `dist` run shares.
pub struct BuildInfo {
    /// The Debian version: the workspace version (a native package).
    pub version: String,
    /// The time of HEAD's commit (seconds since the epoch), else now: the
    /// changelog's and man page's date and `SOURCE_DATE_EPOCH` for
    /// dpkg-deb, so a rebuild of the same commit gives the same files.
    pub epoch: i64,
}

impl BuildInfo {
    pub fn read(ws: &Workspace) -> Result<BuildInfo> {
        let committed = Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(&ws.root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
        let epoch = match committed {
            Some(t) => t,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        Ok(BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            epoch,
        })
    }
}

/// Runs `BINARY --version`, checks it names `name` and `version`, and
/// returns the commit it was built from.
pub fn binary_commit(binary: &Path, name: &str, version: &str) -> Result<String> {
    let line = capture(Command::new(binary).arg("--version"))?;
    let prefix = format!("{name} {version} (commit ");
    line.strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{} --version printed {line:?}, expected \"{prefix}COMMIT)\": \
                 a binary of another version (rebuild it)",
                binary.display()
            )
        })
}

/// `debian/control` of the (notional) source package, which
/// `dpkg-shlibdeps` reads to know the binary packages.
pub fn write_source_control(work: &Path, specs: &[Spec]) -> Result<()> {
    let mut text = format!("Source: {SOURCE}\nMaintainer: {MAINTAINER}\n");
    for spec in specs {
        let _ = write!(text, "\nPackage: {}\nArchitecture: any\n", spec.name);
    }
    write(&work.join("debian/control"), &text)
}

/// The shared-library dependencies of `binary` (staged under
/// `work/debian/<package>/`), as a `Depends` value.
pub fn shlib_depends(work: &Path, binary: &Path) -> Result<String> {
    let mut command = Command::new("dpkg-shlibdeps");
    command.arg("-O").arg(format!("-e{}", binary.display()));
    command.current_dir(work);
    let out = match command.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "xtask dist: dpkg-shlibdeps (dpkg-dev) is not installed; Depends: {FALLBACK_DEPENDS}"
            );
            return Ok(FALLBACK_DEPENDS.to_owned());
        }
        Err(e) => return Err(e).context("start dpkg-shlibdeps"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps -O -e{} failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {stdout:?}"))
}

/// `DEBIAN/control`.
pub fn write_control(
    root: &Path,
    spec: &Spec,
    build: &BuildInfo,
    arch: &str,
    depends: &str,
) -> Result<()> {
    let about = spec.description.lines().map(|l| match l.trim() {
        "" => " .".to_owned(),
        l => format!(" {l}"),
    });
    let text = format!(
        "Package: {name}\n\
         Source: {SOURCE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {size}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/tributary\n\
         Description: {summary}\n{long}\n",
        name = spec.name,
        summary = spec.summary,
        version = build.version,
        size = installed_kib(root)?,
        long = about.collect::<Vec<_>>().join("\n"),
    );
    write(&root.join("DEBIAN/control"), &text)
}

/// The files of the tree outside `DEBIAN/`, relative to `root`, sorted.
fn files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("read {}", dir.display()))?
                .path();
            if path == root.join("DEBIAN") {
                continue;
            }
            if path.is_dir() {
                // The umask must not decide what the package installs.
                set_mode(&path, 0o755)?;
                dirs.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                found.push(relative.to_path_buf());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `Installed-Size` in KiB, counted as dpkg-gencontrol does: each file
/// rounded up to a KiB, one per directory.
fn installed_kib(root: &Path) -> Result<u64> {
    let mut kib = 0;
    for file in files(root)? {
        let len = std::fs::metadata(root.join(&file))
            .with_context(|| format!("stat {}", file.display()))?
            .len();
        kib += len.div_ceil(1024);
    }
    Ok(kib + 1)
}

/// `DEBIAN/md5sums` of every file but the conffiles (dpkg keeps their
/// sums itself), as `md5sum` prints them from the tree's root.
pub fn write_md5sums(root: &Path) -> Result<()> {
    let list: Vec<PathBuf> = files(root)?
        .into_iter()
        .filter(|f| !f.starts_with("etc"))
        .collect();
    let mut command = Command::new("md5sum");
    command.arg("--").args(&list).current_dir(root);
    let sums = capture(&mut command)?;
    write(&root.join("DEBIAN/md5sums"), &format!("{sums}\n"))
}

/// The machine-readable copyright file, from `LICENSE`.
pub fn copyright(ws: &Workspace) -> Result<String> {
    let path = ws.root.join("LICENSE");
    let license =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let holder = license
        .lines()
        .find_map(|l| l.trim().strip_prefix("Copyright (c)"))
        .map(str::trim)
        .with_context(|| format!("{}: no `Copyright (c)` line", path.display()))?;
    // The licence text proper: what follows the copyright line.
    let body = license
        .split_once(holder)
        .map(|(_, rest)| rest.trim())
        .unwrap_or_default();
    let body: Vec<String> = body
        .lines()
        .map(|l| match l.trim() {
            "" => " .".to_owned(),
            l => format!(" {l}"),
        })
        .collect();
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: tributary\n\
         Source: https://example.invalid/tributary\n\
         Comment: The binary links the Rust crates of Cargo.lock statically; their\n \
         licences are checked against deny.toml by `cargo xtask deny`.\n\
         \n\
         Files: *\n\
         Copyright: {holder}\n\
         License: MIT\n{}\n",
        body.join("\n")
    ))
}

/// The native package's changelog: one entry for this build.
pub fn changelog(build: &BuildInfo, commit: &str) -> String {
    format!(
        "{SOURCE} ({version}) unstable; urgency=medium\n\
         \n  * Built by `cargo xtask dist` from commit {commit}.\n\
         \n -- {MAINTAINER}  {date}\n",
        version = build.version,
        date = rfc2822(build.epoch),
    )
}

/// A man page: the binary's `--help` and each subcommand's, verbatim.
pub fn man_page(binary: &Path, spec: &Spec, build: &BuildInfo) -> Result<String> {
    let help = capture(Command::new(binary).arg("--help"))?;
    let about = help.lines().next().unwrap_or(spec.name).trim();
    let mut page = format!(
        ".TH {upper} 1 \"{date}\" \"tributary {version}\" \"User Commands\"\n\
         .SH NAME\n{name} \\- {about}\n\
         .SH SYNOPSIS\n.B {name}\n[\\fIOPTIONS\\fR] \\fICOMMAND\\fR\n\
         .SH DESCRIPTION\n{block}",
        upper = spec.name.to_uppercase(),
        date = ymd(build.epoch),
        version = build.version,
        name = spec.name,
        about = escape(about),
        block = preformatted(help.lines().skip(1)),
    );
    let commands = subcommands(&help);
    if !commands.is_empty() {
        page.push_str(".SH COMMANDS\n");
    }
    for command in commands {
        let text = capture(Command::new(binary).args([command.as_str(), "--help"]))?;
        let _ = write!(
            page,
            ".SS {}\n{}",
            escape(&command),
            preformatted(text.lines())
        );
    }
    let _ = write!(
        page,
        ".SH FILES\n.TP\n.I /etc/tributary/{config}\nthe config the systemd unit starts it with\n\
         .TP\n.I /usr/lib/systemd/system/{name}.service\nthe unit (change it with a drop-in: systemctl edit {name})\n\
         .TP\n.I /var/lib/{name}\nits state directory\n\
         .SH SEE ALSO\nREADME.md of the Tributary source{examples}",
        config = spec.config,
        name = spec.name,
        examples = match spec.examples {
            Some(_) => format!(
                "; the example configs in\n.IR /usr/share/doc/{}/examples/ .\n",
                spec.name
            ),
            None => ".\n".to_owned(),
        },
    );
    Ok(page)
}

/// The names under `Commands:` in clap's help, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Lines shown as they are (`.nf`), escaped for roff.
fn preformatted<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from(".nf\n");
    for line in lines {
        let _ = writeln!(out, "{}", escape(line));
    }
    out.push_str(".fi\n");
    out
}

/// roff escaping: backslashes, hyphens (so `--config` copies as typed) and
/// a leading `.` or `'`, which roff would read as a request.
fn escape(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Days since the epoch → (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil(epoch: i64) -> (i64, u32, u32) {
    let z = epoch.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2026-12-05`.
fn ymd(epoch: i64) -> String {
    let (y, m, d) = civil(epoch);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `Sat, 05 Dec 2026 00:47:15 +0000`, the changelog's date.
fn rfc2822(epoch: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil(epoch);
    let secs = epoch.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[epoch.div_euclid(86_400).rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_date_r() {
        // `date -u -R -d @1796431635`
        assert_eq!(rfc2822(1_796_431_635), "Sat, 05 Dec 2026 00:47:15 +0000");
        assert_eq!(ymd(1_796_431_635), "2026-12-05");
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(ymd(951_782_400), "2000-02-29");
    }

    #[test]
    fn subcommands_come_from_the_commands_section() {
        let help = "About\n\nUsage: x [OPTIONS] <COMMAND>\n\nCommands:\n  run    Run\n  \
                    check  Check it\n  help   Print this message\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(subcommands(help), ["run", "check"]);
    }

    #[test]
    fn roff_requests_and_escapes_are_neutralised() {
        assert_eq!(escape(".SH x"), "\\&.SH x");
        assert_eq!(escape("'x"), "\\&'x");
        assert_eq!(escape("--config a\\b"), "\\-\\-config a\\eb");
    }
}
