//! `cargo xtask dist`: Debian packages of the agent and the collector,
//! built without cargo-deb: the package tree is laid out here and
//! `dpkg-deb --build --root-owner-group` makes the `.deb`.
//!
//! Each package holds its binary (`/usr/bin`, stripped), its
//! systemd unit (`deploy/systemd/`, into `/usr/lib/systemd/system`), its
//! config (`deploy/agent.toml`, `deploy/collector.toml`, into
//! `/etc/tributary/`, a conffile), a man page made from the binary's
//! `--help`, `copyright` and `changelog.gz`, the maintainer scripts of
//! `deploy/debian/`, and the agent also the example configs of
//! `deploy/examples/`. `Depends` comes from `dpkg-shlibdeps` when dpkg-dev
//! is installed, else from [`debian::FALLBACK_DEPENDS`].
//!
//! `--profile release` (the default) builds release binaries first;
//! `--profile dev` packages `target/debug`, which is what `cargo xtask test`
//! does (after its own build, without building again) to check that the
//! packages install, work and remove cleanly ([`install`]).
//!
//! Owns `target/dist/` (packages and the staging tree under `work/`) and
//! `target/dist-check/` (the scratch root of `--check-install`).

mod debian;
mod install;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, run_checked};

pub use install::test_step;

const USAGE: &str = "usage: cargo xtask dist [--profile release|dev] [--out DIR] [--check-install]

  --profile release   build release binaries, then package them (default)
  --profile dev       build and package the debug binaries (quick, large)
  --out DIR           where the .deb files go (default: target/dist)
  --check-install     then install both packages into a scratch root, run
                      them from there, remove and purge them, and check
                      that nothing of them is left (as root only)";

/// One package: a binary of the same name with its unit and config.
pub struct Spec {
    /// Package, binary and unit name.
    pub name: &'static str,
    /// The config under `deploy/`, installed as `/etc/tributary/<config>`.
    pub config: &'static str,
    /// Dependencies besides the shared libraries the binary links.
    pub depends: &'static [&'static str],
    /// A folder under `deploy/` whose `*.toml` go to the doc's `examples/`.
    pub examples: Option<&'static str>,
    /// The control file's one-line description.
    pub summary: &'static str,
    /// The long description, paragraphs separated by blank lines.
    pub description: &'static str,
}

/// The two packages.
pub const SPECS: [Spec; 2] = [
    Spec {
        name: "tributary-agent",
        config: "agent.toml",
        // The exec driver kills a timed-out program's process group with
        // `kill` (procps).
        depends: &["procps"],
        examples: Some("examples"),
        summary: "polls devices and streams readings to a Tributary collector",
        description: "Tributary agents run next to devices and poll them (Modbus TCP, SNMP,\n\
            HTTP/JSON, Prometheus text, MQTT, TCP probes, commands), keep what they\n\
            read in a durable spool and stream it over gRPC to a Tributary\n\
            collector, resending whatever the collector has not acknowledged.\n\
            \n\
            This package holds the agent, a systemd unit and an example config.",
    },
    Spec {
        name: "tributary-collector",
        config: "collector.toml",
        depends: &[],
        examples: None,
        summary: "stores the readings Tributary agents stream to it",
        description: "The Tributary collector takes the readings agents stream over gRPC,\n\
            stores them in SQLite or PostgreSQL with no reading lost and none\n\
            stored twice, and answers queries (list, latest, range, tail).\n\
            \n\
            This package holds the collector, a systemd unit and a config.",
    },
];

/// Which cargo profile's binaries go into the packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

impl Profile {
    fn parse(s: &str) -> Result<Profile> {
        match s {
            "dev" | "debug" => Ok(Profile::Dev),
            "release" => Ok(Profile::Release),
            other => bail!("--profile {other:?}: expected `release` or `dev`"),
        }
    }

    /// The directory of `target/` holding this profile's binaries.
    fn dir(self) -> &'static str {
        match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        }
    }
}

/// A built package.
pub struct Deb {
    pub spec: &'static Spec,
    /// The `.deb` file.
    pub path: PathBuf,
    /// The binary it was made from (before stripping).
    pub binary: PathBuf,
}

/// `cargo xtask dist ARGS`.
pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let mut profile = Profile::Release;
    let mut out = ws.target.join("dist");
    let mut check = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--profile" => {
                let value = args.next().context("--profile needs a value")?;
                profile = Profile::parse(value)?;
            }
            "--out" => out = PathBuf::from(args.next().context("--out needs a directory")?),
            "--check-install" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("dist: unknown argument {other:?}\n\n{USAGE}"),
        }
    }

    let mut build = ws.cargo_command(["build", "-j2"]);
    match profile {
        Profile::Release => {
            build.arg("--release");
            for spec in &SPECS {
                build.args(["--bin", spec.name]);
            }
        }
        // What `cargo xtask test` and `demo` build: the same features, so
        // the same artifacts (after a test run this builds nothing).
        Profile::Dev => {
            build.args(["--workspace", "--bins", "--exclude", "xtask"]);
        }
    }
    run_checked(&mut build)?;

    let debs = build_all(ws, profile, &out)?;
    for deb in &debs {
        println!("xtask dist: {}", ws.display(&deb.path));
    }
    if check {
        install::check(ws, &debs)?;
    }
    Ok(())
}

/// Packages the binaries already built for `profile` into `out`.
pub fn build_all(ws: &Workspace, profile: Profile, out: &Path) -> Result<Vec<Deb>> {
    let bin_dir = ws.target.join(profile.dir());
    for spec in &SPECS {
        let bin = bin_dir.join(spec.name);
        if !bin.is_file() {
            bail!(
                "{} is missing: build it first (cargo build{} -p {})",
                bin.display(),
                if profile == Profile::Release {
                    " --release"
                } else {
                    ""
                },
                spec.name
            );
        }
    }
    let work = out.join("work");
    remove_if_exists(&work)?;
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let build = debian::BuildInfo::read(ws)?;
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?;

    // Lay out every tree first: dpkg-shlibdeps wants to see each binary
    // inside its package's directory, `debian/<package>/`.
    let mut roots = Vec::new();
    for spec in &SPECS {
        let root = work.join("debian").join(spec.name);
        stage(ws, spec, &bin_dir.join(spec.name), &root, &build)?;
        roots.push(root);
    }
    debian::write_source_control(&work, &SPECS)?;

    let mut debs = Vec::new();
    for (spec, root) in SPECS.iter().zip(&roots) {
        let shlibs = debian::shlib_depends(&work, &root.join("usr/bin").join(spec.name))?;
        let depends: Vec<&str> = std::iter::once(shlibs.as_str())
            .chain(spec.depends.iter().copied())
            .collect();
        debian::write_control(root, spec, &build, &arch, &depends.join(", "))?;
        let deb = out.join(format!("{}_{}_{arch}.deb", spec.name, build.version));
        let mut command = Command::new("dpkg-deb");
        command
            .env("SOURCE_DATE_EPOCH", build.epoch.to_string())
            .arg("--build")
            .arg("--root-owner-group");
        if profile == Profile::Dev {
            // Debug binaries are large and thrown away after the test: fast
            // compression (xz would take ~10 s a package).
            command.args(["-Zgzip", "-z1"]);
        }
        command.arg(root).arg(&deb);
        run_checked(&mut command)?;
        debs.push(Deb {
            spec,
            path: deb.canonicalize().unwrap_or(deb),
            binary: bin_dir.join(spec.name),
        });
    }
    Ok(debs)
}

/// Lays out one package's files under `root` (and `root/DEBIAN`'s scripts).
fn stage(
    ws: &Workspace,
    spec: &Spec,
    binary: &Path,
    root: &Path,
    build: &debian::BuildInfo,
) -> Result<()> {
    let deploy = ws.root.join("deploy");
    let bin = root.join("usr/bin").join(spec.name);
    make_parent(&bin)?;
    // Stripped as dh_strip does (lintian wants it): a backtrace then shows
    // addresses, which the unstripped binary in target/ resolves (the
    // build id stays).
    let mut strip = Command::new("strip");
    strip
        .args([
            "--remove-section=.comment",
            "--remove-section=.note",
            "--strip-unneeded",
            "-o",
        ])
        .arg(&bin)
        .arg(binary);
    let out = strip
        .output()
        .with_context(|| format!("start strip (binutils) for {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            crate::show(&strip),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    set_mode(&bin, 0o755)?;

    let commit = debian::binary_commit(&bin, spec.name, &build.version)?;
    copy(
        &deploy
            .join("systemd")
            .join(format!("{}.service", spec.name)),
        &root
            .join("usr/lib/systemd/system")
            .join(format!("{}.service", spec.name)),
    )?;
    copy(
        &deploy.join(spec.config),
        &root.join("etc/tributary").join(spec.config),
    )?;

    let doc = root.join("usr/share/doc").join(spec.name);
    write(&doc.join("copyright"), &debian::copyright(ws)?)?;
    write_gz(
        &doc.join("changelog.gz"),
        debian::changelog(build, &commit).as_bytes(),
    )?;
    if let Some(folder) = spec.examples {
        let dir = deploy.join(folder);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        names.sort();
        for path in names {
            let name = path.file_name().context("example without a name")?;
            copy(&path, &doc.join("examples").join(name))?;
        }
    }
    let man = debian::man_page(&bin, spec, build)?;
    write_gz(
        &root
            .join("usr/share/man/man1")
            .join(format!("{}.1.gz", spec.name)),
        man.as_bytes(),
    )?;

    let control = root.join("DEBIAN");
    std::fs::create_dir_all(&control).with_context(|| format!("create {}", control.display()))?;
    for script in ["postinst", "prerm", "postrm"] {
        let source = deploy.join("debian").join(script);
        let text = std::fs::read_to_string(&source)
            .with_context(|| format!("read {}", source.display()))?;
        let path = control.join(script);
        write(&path, &text.replace("#PACKAGE#", spec.name))?;
        set_mode(&path, 0o755)?;
        let check = Command::new("sh").arg("-n").arg(&path).status();
        if !check.is_ok_and(|s| s.success()) {
            bail!("{}: sh -n finds a syntax error", source.display());
        }
    }
    write(
        &control.join("conffiles"),
        &format!("/etc/tributary/{}\n", spec.config),
    )?;
    debian::write_md5sums(root)
}

/// Runs `command` and returns its standard output, trimmed; a failure
/// names the command and says what it printed on standard error.
pub fn capture(command: &mut Command) -> Result<String> {
    let shown = crate::show(command);
    let out = command.output().with_context(|| format!("start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn make_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    Ok(())
}

/// Copies a file into the tree, mode 0644.
fn copy(from: &Path, to: &Path) -> Result<()> {
    make_parent(to)?;
    std::fs::copy(from, to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o644)
}

/// Writes a file into the tree, mode 0644.
fn write(path: &Path, text: &str) -> Result<()> {
    make_parent(path)?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    set_mode(path, 0o644)
}

/// Writes `bytes` gzipped (`gzip -9n`: no name or time inside, so the
/// package does not change when nothing did), mode 0644.
fn write_gz(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::process::Stdio;
    make_parent(path)?;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("start gzip")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(bytes)
            .with_context(|| format!("gzip into {}", path.display()))?;
    }
    let status = child.wait().context("wait for gzip")?;
    if !status.success() {
        bail!("gzip -9n into {} failed: {status}", path.display());
    }
    set_mode(path, 0o644)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn remove_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
    }
}
