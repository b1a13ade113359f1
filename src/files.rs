//! Writing files the way a credential store must: atomically (temp file, fsync, rename,
//! fsync of the directory) and with the mode set before any byte is written.
//!
//! [`Staged`] splits that in two for callers that must know a file can be written before they
//! do something that cannot be undone (`tessera agent bootstrap` spends a single-use token):
//! [`Staged::create`] makes the temp file next to the target, [`Staged::commit`] fills it and
//! renames it into place. A staged file that is dropped uncommitted is removed.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Mode of files holding private keys.
pub const PRIVATE: u32 = 0o600;
/// Mode of public files (certificates, CRLs).
pub const PUBLIC: u32 = 0o644;

/// Replaces `path` with `contents` atomically; readers see the old file or the new one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    Staged::create(path, mode)?.commit(contents)
}

/// The directory a file is in. A bare name (`out.pem`) has the empty path as its parent,
/// which names no directory: it is in the working directory.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temp file created (empty, with its final mode) next to the file it will replace.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl Staged {
    /// Creates the temp file `.<name>.tmp` in `path`'s directory, so that a directory that
    /// does not exist or cannot be written fails here, before anything else happens.
    pub fn create(path: &Path, mode: u32) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        if path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let tmp = parent_dir(path).join(tmp_name);
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed or (for PUBLIC) changed the mode `open` applied.
        let staged = Self {
            path: path.to_owned(),
            tmp,
            file: Some(file),
        };
        if let Some(f) = &staged.file {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        Ok(staged)
    }

    /// Writes `contents`, syncs them, renames the temp file over the target and syncs the
    /// directory.
    pub fn commit(mut self, contents: &[u8]) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.write_all(contents)?;
            f.sync_all()?;
        }
        fs::rename(&self.tmp, &self.path)?;
        // Renamed: nothing left for `drop` to remove.
        self.tmp = PathBuf::new();
        File::open(parent_dir(&self.path))?.sync_all()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Creates a directory (and parents) with the given mode if it does not exist.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    if !path.exists() {
        fs::create_dir_all(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.key");
        write_atomic(&p, b"one", PRIVATE).unwrap();
        write_atomic(&p, b"two", PRIVATE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bare_name_is_in_the_working_directory() {
        assert_eq!(parent_dir(Path::new("out.pem")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/out.pem")), Path::new("/"));
        assert_eq!(parent_dir(Path::new("a/out.pem")), Path::new("a"));
    }

    #[test]
    fn a_staged_file_fails_early_and_leaves_nothing_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        assert!(Staged::create(&d.path().join("missing/k.key"), PRIVATE).is_err());
        assert!(Staged::create(d.path(), PRIVATE).is_err(), "a directory");
        let p = d.path().join("k.key");
        drop(Staged::create(&p, PRIVATE).unwrap());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        Staged::create(&p, PRIVATE).unwrap().commit(b"k").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"k");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
