//! `tributary-agent run --watch`: notices a change of the files a config
//! was read from (the main file, its included files, its inventory CSVs)
//! or a new file an include pattern matches, so the agent reloads as on
//! SIGHUP.
//!
//! The directories of those files are watched (through `notify`: inotify
//! on Linux), not the files: an editor that saves by writing a new file
//! and renaming it over the old one replaces the inode a file watch would
//! hold. Events are filtered on `notify`'s thread against the watched set,
//! so a log or stats file written in the same directory wakes nobody.
//! After each reload the agent calls [`ConfigWatcher::watch`] with the set
//! the new config was read from (includes may have changed); the new
//! `notify` watcher is made before the old one is dropped, and both send
//! on the same channel, so a change during a reload is not lost.
//!
//! Owns: the `notify` watcher and its channel. A change is a signal
//! (capacity one: changes coalesce); [`ConfigWatcher::changed`] returns
//! once no change has come for [`DEBOUNCE`], so an editor's burst of
//! writes, or a script writing several files, makes one reload.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::warn;

/// Quiet time after a change before the reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// A reload starts at the latest this long after the first change, even
/// if changes keep coming.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// The files a config was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// The main file first, then included files and inventories.
    pub files: Vec<PathBuf>,
    /// Include patterns with a wildcard in the file name, joined to their
    /// directory (`/etc/tributary/conf.d/*.toml`).
    pub patterns: Vec<PathBuf>,
}

/// What a change must touch to count: file names by directory, and
/// patterns by directory (directories canonical, as the watcher reports).
#[derive(Debug, Default)]
struct Filter {
    files: HashMap<PathBuf, HashSet<String>>,
    patterns: HashMap<PathBuf, Vec<String>>,
}

impl Filter {
    fn new(set: &Watched) -> Filter {
        let mut f = Filter::default();
        for file in &set.files {
            if let Some((dir, name)) = split(file) {
                f.files.entry(dir).or_default().insert(name);
            }
        }
        for pattern in &set.patterns {
            if let Some((dir, name)) = split(pattern) {
                f.patterns.entry(dir).or_default().push(name);
            }
        }
        f
    }

    fn dirs(&self) -> HashSet<&PathBuf> {
        self.files.keys().chain(self.patterns.keys()).collect()
    }

    fn matches(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return false;
        };
        self.files
            .get(dir)
            .is_some_and(|names| names.contains(name))
            || self.patterns.get(dir).is_some_and(|patterns| {
                patterns
                    .iter()
                    .any(|p| tributary_config::glob_matches(p, name))
            })
    }
}

/// A file's canonical directory and its name.
fn split(path: &Path) -> Option<(PathBuf, String)> {
    let name = path.file_name()?.to_str()?.to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some((
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()),
        name,
    ))
}

/// Whether an event of this kind can mean new content (reads and opens,
/// which every reload causes, cannot).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

/// Watches the files of a config; see the module's comment.
pub struct ConfigWatcher {
    watcher: Option<RecommendedWatcher>,
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

impl ConfigWatcher {
    /// A watcher of nothing yet.
    pub fn new() -> ConfigWatcher {
        let (tx, rx) = mpsc::channel(1);
        ConfigWatcher {
            watcher: None,
            tx,
            rx,
        }
    }

    /// Watches `set` from now on (instead of the set before). A directory
    /// that cannot be watched is logged and skipped; `Err` when no watcher
    /// can be made at all.
    pub fn watch(&mut self, set: &Watched) -> Result<(), notify::Error> {
        let filter = Filter::new(set);
        let dirs: Vec<PathBuf> = filter.dirs().into_iter().cloned().collect();
        let tx = self.tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else {
                    // An overflow of the kernel's queue, say: reload to be sure.
                    let _ = tx.try_send(());
                    return;
                };
                if is_change(&event.kind) && event.paths.iter().any(|p| filter.matches(p)) {
                    // Full: a change is already waiting, which is enough.
                    let _ = tx.try_send(());
                }
            })?;
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %e, "--watch: cannot watch this directory; its files' changes need a SIGHUP");
            }
        }
        // The new watcher runs before the old one stops.
        self.watcher = Some(watcher);
        Ok(())
    }

    /// Waits for a change, then until none has come for [`DEBOUNCE`] (or
    /// [`DEBOUNCE_MAX`] has passed since the first).
    pub async fn changed(&mut self) {
        // The sender is ours: the channel never closes.
        let _ = self.rx.recv().await;
        let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(deadline);
            match tokio::time::timeout_at(quiet, self.rx.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                _ => return,
            }
        }
    }
}

impl Default for ConfigWatcher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watched_files_and_new_matches_of_a_pattern_count() {
        let dir = std::env::temp_dir();
        let canon = std::fs::canonicalize(&dir).expect("temp dir");
        let set = Watched {
            files: vec![dir.join("agent.toml"), dir.join("switches.csv")],
            patterns: vec![dir.join("*.inc.toml")],
        };
        let f = Filter::new(&set);
        assert!(f.matches(&canon.join("agent.toml")));
        assert!(f.matches(&canon.join("switches.csv")));
        assert!(f.matches(&canon.join("new.inc.toml")));
        assert!(!f.matches(&canon.join("agent.log")));
        assert!(!f.matches(&canon.join(".hidden.inc.toml")));
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
    }
}
