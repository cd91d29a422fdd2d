//! Durable file-system operations: a file's data and its directory entry
//! both reach the disk. Creating or renaming a file changes its directory,
//! and that change is durable only once the directory itself is synced;
//! the sink, download and upload stages use these helpers for every file
//! whose existence a committed position relies on. Blocking: call them on a
//! blocking thread.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
    let mut syncs = DirSyncs::default();
    create_dir_all_deferred(dir, &mut syncs)?;
    syncs.sync()
}

/// [`create_dir_all`] leaving the syncs to `syncs`.
fn create_dir_all_deferred(dir: &Path, syncs: &mut DirSyncs) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_deferred(parent, syncs)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            syncs.parent_of(dir);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Directories to sync once for many file operations (a batch's moves):
/// each distinct one, in the order first needed (a new directory's parent
/// before the new directory).
#[derive(Debug, Default)]
pub struct DirSyncs(Vec<PathBuf>);

impl DirSyncs {
    /// `dir` needs a sync.
    pub fn dir(&mut self, dir: &Path) {
        if !self.0.iter().any(|d| d == dir) {
            self.0.push(dir.to_path_buf());
        }
    }

    /// The directory that holds `path` needs a sync.
    pub fn parent_of(&mut self, path: &Path) {
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => self.dir(dir),
            None => self.dir(Path::new(".")),
        }
    }

    /// Syncs them all.
    pub fn sync(self) -> io::Result<()> {
        self.0.iter().try_for_each(|d| sync_dir(d))
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
    let mut syncs = DirSyncs::default();
    move_creating_dirs_deferred(from, to, &mut syncs)?;
    syncs.sync()
}

/// [`move_creating_dirs`] leaving the directory syncs to `syncs` (the move
/// is durable once they are done).
pub fn move_creating_dirs_deferred(from: &Path, to: &Path, syncs: &mut DirSyncs) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() => {
            if let Some(dir) = to.parent() {
                create_dir_all_deferred(dir, syncs)?;
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
    fn deferred_moves_name_each_directory_to_sync_once_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut syncs = DirSyncs::default();
        for n in ["1", "2"] {
            write(&dir.path().join(n), n.as_bytes()).unwrap();
            move_creating_dirs_deferred(&dir.path().join(n), &dir.path().join(format!("a/b/{n}")), &mut syncs).unwrap();
        }
        let p = |s: &str| dir.path().join(s);
        // a/ was created in the root, b/ in a/, then both files renamed into b/
        assert_eq!(syncs.0, vec![dir.path().to_path_buf(), p("a"), p("a/b")]);
        assert_eq!(std::fs::read(p("a/b/2")).unwrap(), b"2");
        syncs.sync().unwrap();
    }
}
