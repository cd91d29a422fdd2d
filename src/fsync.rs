//! Durable file-system operations: a file's data and its directory entry
//! both reach the disk. Creating or renaming a file changes its directory,
//! and that change is durable only once the directory itself is synced;
//! the sink, download and upload stages use these helpers for every file
//! whose existence a committed position relies on. Blocking: call them on a
//! blocking thread.
//!
//! A directory that [`create_dir_all`] has created but whose entry in its
//! parent is not yet synced is listed process-wide until that sync
//! succeeds: a rename into it by another thread names its parent too
//! ([`DirSyncs`]), so that file is not answered durable while the
//! directory holding it could still vanish in a crash.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Directories created whose entry in their parent is not yet synced.
static UNSYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn unsynced() -> MutexGuard<'static, Vec<PathBuf>> {
    UNSYNCED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Syncs directory `dir` (its entries: files created, renamed, removed).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory that holds `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Syncs the directory that holds `path`.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    sync_dir(parent(path))
}

/// Creates `dir` and its missing parents, syncing the directory of each
/// one created.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    // listed before it exists, until its entry is synced (kept listed if
    // that sync fails: later users sync the parent themselves)
    unsynced().push(dir.to_path_buf());
    let (made, unsynced_entry) = match std::fs::create_dir(dir) {
        Ok(()) => {
            let synced = sync_parent(dir);
            let failed = synced.is_err();
            (synced, failed)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => (Ok(()), false),
        Err(e) => (Err(e), false),
    };
    let mut listed = unsynced();
    if !unsynced_entry && let Some(i) = listed.iter().position(|d| d == dir) {
        listed.swap_remove(i);
    }
    made
}

/// Directories to sync once for many file operations (a group of
/// renames): each distinct one, in the order first named. An operation
/// that names its directories here is durable only once [`DirSyncs::sync`]
/// has returned `Ok`.
#[derive(Debug, Default)]
pub struct DirSyncs(Vec<PathBuf>);

/// A directory sync that failed.
#[derive(Debug, thiserror::Error)]
#[error("syncing directory {}: {source}", dir.display())]
pub struct DirSyncError {
    pub dir: PathBuf,
    pub source: io::Error,
}

impl DirSyncs {
    /// `dir` needs a sync, and so does the parent of `dir` or of any of
    /// its ancestors that another thread has just created and not yet
    /// synced.
    pub fn dir(&mut self, dir: &Path) {
        self.add(dir);
        let young: Vec<PathBuf> = {
            let listed = unsynced();
            if listed.is_empty() {
                return;
            }
            dir.ancestors().filter(|a| listed.iter().any(|d| d == a)).map(|a| parent(a).to_path_buf()).collect()
        };
        for p in young {
            self.add(&p);
        }
    }

    fn add(&mut self, dir: &Path) {
        if !self.0.iter().any(|d| d == dir) {
            self.0.push(dir.to_path_buf());
        }
    }

    /// The directory that holds `path` needs a sync.
    pub fn parent_of(&mut self, path: &Path) {
        self.dir(parent(path));
    }

    /// The directories named so far.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.0
    }

    /// Syncs them all, stopping at the first that fails.
    pub fn sync(self) -> Result<(), DirSyncError> {
        self.0.into_iter().try_for_each(|dir| sync_dir(&dir).map_err(|source| DirSyncError { dir, source }))
    }
}

/// Renames `from` to `to` and syncs the directories involved.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    let mut syncs = DirSyncs::default();
    rename_deferred(from, to, &mut syncs)?;
    syncs.sync().map_err(|e| e.source)
}

/// [`rename`], leaving the directory syncs to `syncs`.
pub fn rename_deferred(from: &Path, to: &Path, syncs: &mut DirSyncs) -> io::Result<()> {
    std::fs::rename(from, to)?;
    syncs.parent_of(to);
    if from.parent() != to.parent() {
        syncs.parent_of(from);
    }
    Ok(())
}

/// Renames `from` to `to`, creating the directories of `to` when the
/// rename finds them missing (no check before: a target directory usually
/// exists), and syncs the directory of `to` only. For moving a file whose
/// old name nobody relies on: if a crash undoes the removal of `from`, a
/// second name of the same file is left behind, and a repeated move (a
/// redelivery) renames it again. One directory sync instead of two.
pub fn move_creating_dirs(from: &Path, to: &Path) -> io::Result<()> {
    let mut syncs = DirSyncs::default();
    move_creating_dirs_deferred(from, to, &mut syncs)?;
    syncs.sync().map_err(|e| e.source)
}

/// [`move_creating_dirs`], leaving the sync of `to`'s directory to `syncs`.
/// Directories it creates are synced at once (a later move into one that
/// exists would not sync its parent).
pub fn move_creating_dirs_deferred(from: &Path, to: &Path, syncs: &mut DirSyncs) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() => {
            if let Some(dir) = to.parent() {
                create_dir_all(dir)?;
            }
            std::fs::rename(from, to)?;
        }
        r => r?,
    }
    syncs.parent_of(to);
    Ok(())
}

/// Writes `bytes` to a new or truncated file at `path` and syncs it (not
/// its directory: callers usually rename it into place next).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_writes_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        create_dir_all(&deep).unwrap();
        write(&deep.join("x.tmp"), b"data").unwrap();
        rename(&deep.join("x.tmp"), &dir.path().join("a/x")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/x")).unwrap(), b"data");
        assert!(create_dir_all(&dir.path().join("a/x/sub")).is_err(), "a file in the way is an error");
        // the target's directories are created when missing
        write(&dir.path().join("y"), b"moved").unwrap();
        move_creating_dirs(&dir.path().join("y"), &dir.path().join("p/q/y")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("p/q/y")).unwrap(), b"moved");
        assert!(!dir.path().join("y").exists());
        let missing = move_creating_dirs(&dir.path().join("nope"), &dir.path().join("r/nope")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "a missing source is not a missing directory");
        assert!(!dir.path().join("r").exists());
    }

    #[test]
    fn deferred_operations_name_each_directory_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut syncs = DirSyncs::default();
        for n in ["1", "2"] {
            write(&dir.path().join(n), n.as_bytes()).unwrap();
            move_creating_dirs_deferred(&dir.path().join(n), &dir.path().join(format!("a/{n}")), &mut syncs).unwrap();
        }
        write(&dir.path().join("3"), b"3").unwrap();
        rename_deferred(&dir.path().join("3"), &dir.path().join("a/3"), &mut syncs).unwrap();
        assert_eq!(syncs.dirs(), [dir.path().join("a"), dir.path().to_path_buf()]);
        syncs.sync().unwrap();
        let mut gone = DirSyncs::default();
        gone.dir(&dir.path().join("nope"));
        let e = gone.sync().unwrap_err();
        assert_eq!(e.dir, dir.path().join("nope"));
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn a_directory_created_and_not_yet_synced_has_its_parent_named_too() {
        let dir = tempfile::tempdir().unwrap();
        let (young, inner) = (dir.path().join("young"), dir.path().join("young/inner"));
        std::fs::create_dir_all(&inner).unwrap();
        // as `create_dir_all` in another thread, between its create and its sync
        unsynced().push(young.clone());
        let mut syncs = DirSyncs::default();
        syncs.parent_of(&inner.join("file"));
        assert_eq!(syncs.dirs(), [inner.clone(), dir.path().to_path_buf()]);
        unsynced().retain(|d| d != &young);
        let mut syncs = DirSyncs::default();
        syncs.parent_of(&inner.join("file"));
        assert_eq!(syncs.dirs(), [inner]);
        // `create_dir_all` lists what it creates only until it is synced
        create_dir_all(&dir.path().join("a/b")).unwrap();
        assert!(!unsynced().iter().any(|d| d.starts_with(dir.path())));
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"x").unwrap();
        assert!(create_dir_all(&blocked.join("sub")).is_err());
        assert!(!unsynced().iter().any(|d| d.starts_with(dir.path())), "a failed create is not listed");
    }
}
