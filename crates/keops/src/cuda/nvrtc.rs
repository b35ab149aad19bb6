//! NVRTC, loaded at run time: generated CUDA C compiled to CUBIN for one architecture.
//!
//! The library is opened by path with `libloading`, not linked, so the crate builds and
//! runs where CUDA is absent; [`Nvrtc::get`] then returns an error, never a panic. Which
//! library: the files or folders listed in `KEOPS_NVRTC` (separated by `:`), then
//! `$CUDA_HOME`/`$CUDA_PATH`, then the loader's search path (`libnvrtc.so.13`,
//! `.so.12`, `.so`). The Python package points `KEOPS_NVRTC` at the `nvidia-cuda-nvrtc`
//! wheel when one is installed (torch depends on it).
//!
//! CUBIN, not PTX: a PTX from a newer NVRTC is refused by an older driver, a CUBIN for
//! the device's exact architecture is not JIT-compiled at all.

use crate::error::{KeopsError, Result};
use libloading::{Library, Symbol};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

type Program = *mut c_void;
type Status = c_int;

/// A GPU architecture, as `sm_{major}{minor}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arch {
    /// Compute capability, major.
    pub major: u32,
    /// Compute capability, minor.
    pub minor: u32,
}

impl Arch {
    /// `sm_90` and the like.
    pub fn sm(self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }
}

/// A loaded NVRTC.
pub struct Nvrtc {
    lib: Library,
    path: PathBuf,
    version: (i32, i32),
}

fn unavailable(msg: String) -> KeopsError {
    KeopsError::Backend {
        backend: "GPU".into(),
        msg,
    }
}

/// A dynamic loader's error with its reason: libloading's message is only "dlopen
/// failed", the loader's own text (no such file, wrong ELF class, ...) is its source.
pub(crate) fn load_error(e: &libloading::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg = format!("{msg}: {c}");
        cause = c.source();
    }
    msg
}

/// Where to look for the library, in order.
pub fn candidates() -> Vec<PathBuf> {
    #[cfg(not(windows))]
    const NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
    // Windows names the DLL by major version (CUDA 13 keeps it in `bin\x64`).
    #[cfg(windows)]
    const NAMES: &[&str] = &["nvrtc64_130_0.dll", "nvrtc64_120_0.dll"];
    #[cfg(not(windows))]
    const SUBDIRS: &[&str] = &["lib64", "lib"];
    #[cfg(windows)]
    const SUBDIRS: &[&str] = &["bin\\x64", "bin"];
    let mut out = Vec::new();
    let mut dir_or_file = |p: PathBuf| {
        if p.is_dir() {
            out.extend(NAMES.iter().map(|n| p.join(n)).filter(|f| f.exists()));
        } else if p.exists() {
            out.push(p);
        }
    };
    if let Some(list) = std::env::var_os("KEOPS_NVRTC") {
        std::env::split_paths(&list).for_each(&mut dir_or_file);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            for sub in SUBDIRS {
                dir_or_file(PathBuf::from(&root).join(sub));
            }
        }
    }
    // Bare names: the dynamic loader's own search (LD_LIBRARY_PATH, ldconfig).
    out.extend(NAMES.iter().map(PathBuf::from));
    out
}

impl Nvrtc {
    /// The process-wide NVRTC: the first candidate that loads, preferring one whose major
    /// version is at most `max_major` (the driver's CUDA version, whose loader must
    /// accept the CUBIN). The result, library or error, is cached.
    pub fn get(max_major: Option<i32>) -> Result<&'static Nvrtc> {
        static LIB: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
        LIB.get_or_init(|| {
            let mut tried = Vec::new();
            let mut fallback = None;
            for c in candidates() {
                match Nvrtc::open(&c) {
                    Ok(n) if max_major.map_or(true, |m| n.version.0 <= m) => return Ok(n),
                    Ok(n) => {
                        tried.push(format!(
                            "{} (CUDA {}, newer than the driver)",
                            c.display(),
                            n.version.0
                        ));
                        fallback.get_or_insert(n);
                    }
                    Err(e) => tried.push(e.reason()),
                }
            }
            fallback.ok_or_else(|| {
                format!(
                    "NVRTC (libnvrtc) was not found; install the `nvidia-cuda-nvrtc` wheel or \
                     the CUDA toolkit, or point KEOPS_NVRTC at the library or its folder. Tried: {}",
                    tried.join("; ")
                )
            })
        })
        .as_ref()
        .map_err(|e| unavailable(e.clone()))
    }

    /// Opens the library at `path` (a file, or a bare name for the loader to find).
    pub fn open(path: &Path) -> Result<Nvrtc> {
        // SAFETY: loading NVRTC runs no initialisers with preconditions.
        let lib = unsafe { Library::new(path) }.map_err(|e| {
            // dlopen's message names the file, Windows' LoadLibraryExW's does not.
            let (msg, file) = (load_error(&e), path.display().to_string());
            unavailable(if msg.contains(&file) {
                msg
            } else {
                format!("{file}: {msg}")
            })
        })?;
        let mut n = Nvrtc {
            lib,
            path: path.to_path_buf(),
            version: (0, 0),
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion(int*, int*) writes two ints.
        unsafe {
            let f: Symbol<unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status> =
                n.sym(b"nvrtcVersion\0")?;
            n.check(f(&mut major, &mut minor), "nvrtcVersion")?;
        }
        n.version = (major, minor);
        Ok(n)
    }

    /// `(major, minor)` of this NVRTC.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Architectures this NVRTC can compile for.
    pub fn supported_archs(&self) -> Result<Vec<u32>> {
        // SAFETY: the two calls write one int, then that many ints.
        unsafe {
            let num: Symbol<unsafe extern "C" fn(*mut c_int) -> Status> =
                self.sym(b"nvrtcGetNumSupportedArchs\0")?;
            let get: Symbol<unsafe extern "C" fn(*mut c_int) -> Status> =
                self.sym(b"nvrtcGetSupportedArchs\0")?;
            let mut n = 0;
            self.check(num(&mut n), "nvrtcGetNumSupportedArchs")?;
            let mut v = vec![0 as c_int; n.max(0) as usize];
            self.check(get(v.as_mut_ptr()), "nvrtcGetSupportedArchs")?;
            Ok(v.into_iter().map(|a| a as u32).collect())
        }
    }

    /// Compiles `src` to CUBIN for `arch` (with `--use_fast_math` when `fast_math`). A
    /// compile error carries NVRTC's log; `name` is the file name NVRTC's messages use.
    pub fn compile(
        &self,
        src: &str,
        name: &str,
        arch: Arch,
        fast_math: bool,
    ) -> std::result::Result<Vec<u8>, CompileFailure> {
        let fail = |log: String| CompileFailure { log };
        let csrc = CString::new(src).map_err(|_| fail("source contains a NUL byte".into()))?;
        let cname = CString::new(name).map_err(|_| fail("name contains a NUL byte".into()))?;
        let fast = fast_math.then(|| "--use_fast_math".to_string());
        let opts: Vec<CString> = [
            format!("--gpu-architecture={}", arch.sm()),
            "--std=c++17".into(),
        ]
        .into_iter()
        .chain(fast)
        .map(|o| CString::new(o).expect("options have no NUL"))
        .collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let api = |e: KeopsError| fail(e.to_string());
        // SAFETY: the NVRTC calls below follow its API: a program is created, compiled,
        // queried with buffers of the sizes it reports, and destroyed once.
        unsafe {
            type Create = unsafe extern "C" fn(
                *mut Program,
                *const c_char,
                *const c_char,
                c_int,
                *const *const c_char,
                *const *const c_char,
            ) -> Status;
            type Compile = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status;
            type Size = unsafe extern "C" fn(Program, *mut usize) -> Status;
            type Get = unsafe extern "C" fn(Program, *mut c_char) -> Status;
            type Destroy = unsafe extern "C" fn(*mut Program) -> Status;
            let create: Symbol<Create> = self.sym(b"nvrtcCreateProgram\0").map_err(api)?;
            let compile: Symbol<Compile> = self.sym(b"nvrtcCompileProgram\0").map_err(api)?;
            let log_size: Symbol<Size> = self.sym(b"nvrtcGetProgramLogSize\0").map_err(api)?;
            let get_log: Symbol<Get> = self.sym(b"nvrtcGetProgramLog\0").map_err(api)?;
            let cubin_size: Symbol<Size> = self.sym(b"nvrtcGetCUBINSize\0").map_err(api)?;
            let get_cubin: Symbol<Get> = self.sym(b"nvrtcGetCUBIN\0").map_err(api)?;
            let destroy: Symbol<Destroy> = self.sym(b"nvrtcDestroyProgram\0").map_err(api)?;
            let mut prog: Program = std::ptr::null_mut();
            self.check(
                create(
                    &mut prog,
                    csrc.as_ptr(),
                    cname.as_ptr(),
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                ),
                "nvrtcCreateProgram",
            )
            .map_err(api)?;
            let status = compile(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let out = if status != 0 {
                let mut n = 0usize;
                let mut log = String::new();
                if log_size(prog, &mut n) == 0 && n > 1 {
                    let mut buf = vec![0u8; n];
                    if get_log(prog, buf.as_mut_ptr().cast()) == 0 {
                        log = String::from_utf8_lossy(&buf[..n - 1]).into_owned();
                    }
                }
                if log.is_empty() {
                    log = self.error_string(status);
                }
                Err(fail(log))
            } else {
                let mut n = 0usize;
                self.check(cubin_size(prog, &mut n), "nvrtcGetCUBINSize")
                    .and_then(|_| {
                        let mut buf = vec![0u8; n];
                        self.check(get_cubin(prog, buf.as_mut_ptr().cast()), "nvrtcGetCUBIN")
                            .map(|_| buf)
                    })
                    .map_err(api)
            };
            destroy(&mut prog);
            out
        }
    }

    /// # Safety
    /// `T` must be the C signature of the symbol.
    unsafe fn sym<T>(&self, name: &[u8]) -> Result<Symbol<'_, T>> {
        self.lib.get(name).map_err(|e| {
            unavailable(format!(
                "{} lacks {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&name[..name.len() - 1]),
                load_error(&e)
            ))
        })
    }

    fn error_string(&self, status: Status) -> String {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string.
        unsafe {
            self.sym::<unsafe extern "C" fn(Status) -> *const c_char>(b"nvrtcGetErrorString\0")
                .ok()
                .map(|f| f(status))
                .filter(|p| !p.is_null())
                .map(|p| CStr::from_ptr(p).to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("NVRTC error {status}"))
        }
    }

    fn check(&self, status: Status, call: &str) -> Result<()> {
        if status == 0 {
            Ok(())
        } else {
            Err(unavailable(format!(
                "{call}: {}",
                self.error_string(status)
            )))
        }
    }
}

/// NVRTC refused a program: its log.
#[derive(Clone, Debug)]
pub struct CompileFailure {
    /// NVRTC's log (or the API error).
    pub log: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_does_not_load_says_why() {
        let path = Path::new("/nonexistent/libnvrtc.so.12");
        let err = Nvrtc::open(path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        // The file, and the loader's own reason, not only libloading's "dlopen failed".
        assert!(err.contains("/nonexistent/libnvrtc.so.12"), "{err}");
        #[cfg(unix)]
        assert!(
            err.contains("dlopen failed: ") && err.contains("No such file"),
            "{err}"
        );
        #[cfg(windows)]
        assert!(err.contains("LoadLibraryExW failed: "), "{err}");
    }
}
