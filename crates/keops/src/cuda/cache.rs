//! The kernel cache: compiled CUBINs in memory and on disk, keyed by the generated
//! source, the GPU architecture and the NVRTC version.
//!
//! Disk entries live in a per-user folder (`$KEOPS_CACHE_DIR`, else `keops-rs` in the
//! platform's cache folder: `$XDG_CACHE_HOME` or `~/.cache` on Linux,
//! `%LOCALAPPDATA%` on Windows, `~/Library/Caches` on macOS), one file per key: a magic
//! tag, the SHA-256 of the CUBIN, then the CUBIN. Files are written to a temporary file
//! in the same folder and renamed into place, so concurrent processes never read a
//! half-written entry; an entry whose checksum does not match is deleted and rebuilt.

use super::nvrtc::Arch;
use crate::error::Result;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 8] = b"KEOPSRS1";

/// Where a cached kernel came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This process had it.
    Memory,
    /// Read from the disk cache.
    Disk,
    /// Compiled now.
    Compiled,
}

/// CUBINs by key, in memory and (optionally) on disk.
#[derive(Debug, Default)]
pub struct KernelCache {
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

/// The cache key: SHA-256 (hex) of the source, the architecture and NVRTC's version.
pub fn key(source: &str, arch: Arch, nvrtc: (i32, i32)) -> String {
    let mut h = Sha256::new();
    h.update(format!("{}\0nvrtc {}.{}\0", arch.sm(), nvrtc.0, nvrtc.1));
    h.update(source);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default folder of the disk cache (see the module docs); `None` without a home.
pub fn default_dir() -> Option<PathBuf> {
    let env = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    env("KEOPS_CACHE_DIR").or_else(|| dirs::cache_dir().map(|d| d.join("keops-rs")))
}

/// The folder of the disk cache's CUBINs: [`default_dir`]`/cubin` (`None` without a
/// home).
pub fn cubin_dir() -> Option<PathBuf> {
    default_dir().map(|d| d.join("cubin"))
}

impl KernelCache {
    /// A cache writing to `dir` (`None`: memory only).
    pub fn new(dir: Option<PathBuf>) -> KernelCache {
        KernelCache {
            dir,
            memory: Mutex::default(),
        }
    }

    /// The disk folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{key}.cubin")))
    }

    /// The CUBIN for `key`: from memory, from disk, or from `compile` (then stored).
    /// A disk cache that cannot be written is not an error: the kernel still runs.
    pub fn get_or_compile(
        &self,
        key: &str,
        compile: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<(Arc<Vec<u8>>, Origin)> {
        let lock = || self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = lock().get(key) {
            return Ok((c.clone(), Origin::Memory));
        }
        let (bin, origin) = match self.read(key) {
            Some(b) => (b, Origin::Disk),
            None => {
                let b = compile()?;
                let _ = self.write(key, &b);
                (b, Origin::Compiled)
            }
        };
        let bin = Arc::new(bin);
        lock().insert(key.to_string(), bin.clone());
        Ok((bin, origin))
    }

    /// The disk entry for `key`, if present and intact; a corrupt one is deleted.
    pub fn read(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.path(key)?;
        let bytes = std::fs::read(&path).ok()?;
        let intact = bytes.len() >= 40
            && &bytes[..8] == MAGIC
            && Sha256::digest(&bytes[40..]).as_slice() == &bytes[8..40];
        if intact {
            Some(bytes[40..].to_vec())
        } else {
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Stores `bin` under `key`, atomically (temporary file, then rename). Where the
    /// rename fails but an intact entry is in place (Windows refuses to replace a file
    /// that another process is reading), that entry stands: a key names its content.
    pub fn write(&self, key: &str, bin: &[u8]) -> std::io::Result<()> {
        let (Some(dir), Some(path)) = (&self.dir, self.path(key)) else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&Sha256::digest(bin))?;
        tmp.write_all(bin)?;
        tmp.as_file().sync_all()?;
        match tmp.persist(path) {
            Err(e) if self.read(key).is_none() => Err(e.error),
            _ => Ok(()),
        }
    }

    /// Forgets every kernel: the entries in memory and the disk cache's files (the
    /// CUBINs, temporaries left by an interrupted write, the failed sources beside
    /// them; no other file of the folder); returns how many files were removed.
    /// Kernels already loaded on a device stay loaded.
    pub fn clear(&self) -> std::io::Result<usize> {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let Some(dir) = &self.dir else {
            return Ok(0);
        };
        let ours = |name: &str| name.ends_with(".cubin") || name.starts_with(".tmp");
        let mut removed = remove_files(dir, ours)?;
        removed += remove_files(&dir.join("failed"), |name| name.ends_with(".cu"))?;
        Ok(removed)
    }

    /// Saves a source that failed to compile next to the cache (or in the temporary
    /// folder) and returns where, for the error message.
    pub fn save_failed_source(&self, key: &str, source: &str) -> Option<PathBuf> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join("failed");
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join(format!("{key}.cu"));
        std::fs::write(&path, source).ok()?;
        Some(path)
    }
}

/// Removes the files of `dir` whose names `pick` selects (a missing folder has none).
fn remove_files(dir: &Path, pick: impl Fn(&str) -> bool) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let picked = entry.file_name().to_str().is_some_and(&pick);
        if picked && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const SM90: Arch = Arch { major: 9, minor: 0 };

    #[test]
    fn key_depends_on_source_arch_and_version() {
        let k = key("src", SM90, (13, 0));
        assert_eq!(k.len(), 64);
        assert_eq!(k, key("src", SM90, (13, 0)));
        assert_ne!(k, key("src2", SM90, (13, 0)));
        assert_ne!(k, key("src", Arch { major: 8, minor: 0 }, (13, 0)));
        assert_ne!(k, key("src", SM90, (12, 8)));
    }

    #[test]
    fn memory_then_disk_then_compile() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Cell::new(0);
        let compile = || {
            calls.set(calls.get() + 1);
            Ok(vec![1u8, 2, 3])
        };
        let c = KernelCache::new(Some(dir.path().to_path_buf()));
        let (b, o) = c.get_or_compile("k", compile).unwrap();
        assert_eq!((b.as_slice(), o), (&[1u8, 2, 3][..], Origin::Compiled));
        assert_eq!(c.get_or_compile("k", compile).unwrap().1, Origin::Memory);
        // Another process: a fresh cache on the same folder.
        let c2 = KernelCache::new(Some(dir.path().to_path_buf()));
        let (b, o) = c2.get_or_compile("k", compile).unwrap();
        assert_eq!((b.as_slice(), o), (&[1u8, 2, 3][..], Origin::Disk));
        assert_eq!(calls.get(), 1);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k.cubin")]);
    }

    #[test]
    fn clear_forgets_kernels_and_removes_only_cache_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = KernelCache::new(Some(dir.path().to_path_buf()));
        let calls = Cell::new(0);
        let compile = || {
            calls.set(calls.get() + 1);
            Ok(vec![7u8])
        };
        c.get_or_compile("k", compile).unwrap();
        c.save_failed_source("bad", "__global__ void f() { oops }")
            .unwrap();
        std::fs::write(dir.path().join(".tmpAbC"), b"half").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"the user's").unwrap();
        assert_eq!(c.clear().unwrap(), 3);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}"); // notes.txt and the empty failed/
        assert!(dir.path().join("notes.txt").exists());
        // Neither memory nor disk has it now: the next call compiles.
        assert_eq!(c.get_or_compile("k", compile).unwrap().1, Origin::Compiled);
        assert_eq!(calls.get(), 2);
        // A cache whose folder was never made has nothing to remove.
        let none = KernelCache::new(Some(dir.path().join("never")));
        assert_eq!(none.clear().unwrap(), 0);
    }

    #[test]
    fn corrupt_entries_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let c = KernelCache::new(Some(dir.path().to_path_buf()));
        c.write("k", &[9u8; 100]).unwrap();
        let path = dir.path().join("k.cubin");
        // Truncated (a crash mid-write of another tool), then flipped bits.
        let full = std::fs::read(&path).unwrap();
        for bad in [
            full[..60].to_vec(),
            {
                let mut b = full.clone();
                b[70] ^= 1;
                b
            },
            b"garbage".to_vec(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(c.read("k"), None);
            assert!(!path.exists(), "a corrupt entry is deleted");
            let c2 = KernelCache::new(Some(dir.path().to_path_buf()));
            let (b, o) = c2.get_or_compile("k", || Ok(vec![9u8; 100])).unwrap();
            assert_eq!((b.len(), o), (100, Origin::Compiled));
            assert_eq!(c.read("k"), Some(vec![9u8; 100]));
        }
    }

    #[test]
    fn concurrent_writers_leave_an_intact_entry() {
        let dir = tempfile::tempdir().unwrap();
        let bin: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let c = KernelCache::new(Some(dir.path().to_path_buf()));
                    for _ in 0..10 {
                        c.write("k", &bin).unwrap();
                        if let Some(r) = c.read("k") {
                            assert_eq!(r, bin);
                        }
                    }
                });
            }
        });
        assert_eq!(
            KernelCache::new(Some(dir.path().to_path_buf())).read("k"),
            Some(bin)
        );
    }

    #[test]
    fn compile_errors_are_not_cached() {
        let c = KernelCache::new(None);
        let e = c.get_or_compile("k", || {
            Err(crate::KeopsError::Option {
                name: "x".into(),
                msg: "y".into(),
            })
        });
        assert!(e.is_err());
        assert_eq!(
            c.get_or_compile("k", || Ok(vec![1])).unwrap().1,
            Origin::Compiled
        );
    }

    #[test]
    fn default_dir_honours_the_environment_variable() {
        // Read-only check of the precedence without mutating the process environment.
        if let Some(d) = std::env::var_os("KEOPS_CACHE_DIR") {
            assert_eq!(default_dir(), Some(PathBuf::from(d)));
        } else if let Some(d) = dirs::cache_dir() {
            assert_eq!(default_dir(), Some(d.join("keops-rs")));
        }
    }
}
