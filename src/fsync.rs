//! Durable file-system operations: a file's data and its directory entry
//! both reach the disk. Creating or renaming a file changes its directory,
//! and that change is durable only once the directory itself is synced;
//! the sink, download and upload stages use these helpers for every file
//! whose existence a committed position relies on. Blocking: call them on a
//! blocking thread.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Syncs directory `dir` (its entries: files created, renamed, removed).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Syncs the directory that holds `path`.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => sync_dir(Path::new(".")),
    }
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
    match std::fs::create_dir(dir) {
        Ok(()) => sync_parent(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` and syncs the directories involved.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_parent(to)?;
    if from.parent() != to.parent() {
        sync_parent(from)?;
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
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() => {
            if let Some(dir) = to.parent() {
                create_dir_all(dir)?;
            }
            std::fs::rename(from, to)?;
        }
        r => r?,
    }
    sync_parent(to)
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
}
