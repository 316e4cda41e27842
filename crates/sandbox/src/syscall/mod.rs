//! The syscall seam: privileged operations behind one trait.
//!
//! Methods take `&CStr` and return a bare [`Errno`] so the real implementation allocates
//! nothing: it runs in the child between `clone` and `execve`, where a multi-threaded parent
//! may have left the allocator locked.

mod fake;
mod linux;

pub use fake::{Call, RecordingSyscall};
pub use linux::LinuxSyscall;

use std::ffi::CStr;
use std::fmt;

/// An `errno` value from a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's current `errno`.
    pub fn last() -> Self {
        // SAFETY: __errno_location returns a valid thread-local pointer.
        Errno(unsafe { *libc::__errno_location() })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

/// Result of a seam call.
pub type SysResult<T> = Result<T, Errno>;

/// User and group ids to switch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Privileged operations used to build a sandbox. One method per syscall (or fixed sequence).
pub trait Syscall {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: u64,
        data: Option<&CStr>,
    ) -> SysResult<()>;
    /// `umount2(2)`.
    fn umount2(&self, target: &CStr, flags: i32) -> SysResult<()>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult<()>;
    /// `chdir(2)`.
    fn chdir(&self, path: &CStr) -> SysResult<()>;
    /// `mkdir(2)`; an existing directory is not an error.
    fn mkdir(&self, path: &CStr, mode: u32) -> SysResult<()>;
    /// Creates an empty regular file (for bind-mounting a file); existing is not an error.
    fn touch(&self, path: &CStr) -> SysResult<()>;
    /// `mknod(2)` then `chown(2)`.
    fn mknod(&self, path: &CStr, mode: u32, dev: u64, ids: Ids) -> SysResult<()>;
    /// `symlink(2)`; an existing link is not an error.
    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult<()>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &[u8]) -> SysResult<()>;
    /// `unshare(2)`.
    fn unshare(&self, flags: i32) -> SysResult<()>;
    /// `setns(2)`.
    fn setns(&self, fd: i32, nstype: i32) -> SysResult<()>;
    /// Opens `path` and writes `data` to it (procfs and sysctl files).
    fn write_file(&self, path: &CStr, data: &[u8]) -> SysResult<()>;
    /// `setrlimit(2)`.
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult<()>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> SysResult<()>;
    /// `prctl(PR_SET_KEEPCAPS, on)`.
    fn set_keep_caps(&self, on: bool) -> SysResult<()>;
    /// `prctl(PR_CAPBSET_DROP, cap)`; `EINVAL` (cap unknown to this kernel) is not an error.
    fn drop_bounding_cap(&self, cap: u32) -> SysResult<()>;
    /// `capset(2)` with 64-bit masks.
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> SysResult<()>;
    /// Clears the ambient set then raises each cap in `ambient`.
    fn set_ambient(&self, ambient: u64) -> SysResult<()>;
    /// `setgroups(2)`, `setresgid(2)`, `setresuid(2)` in that order.
    fn set_ids(&self, ids: Ids, additional_gids: &[libc::gid_t]) -> SysResult<()>;
    /// Installs a seccomp BPF filter (`seccomp(SECCOMP_SET_MODE_FILTER)`).
    fn seccomp(&self, filter: &[libc::sock_filter]) -> SysResult<()>;
    /// `setsid(2)`.
    fn setsid(&self) -> SysResult<()>;
    /// Makes `fd` the controlling terminal and stdin/stdout/stderr.
    fn set_console(&self, fd: i32) -> SysResult<()>;
    /// `open(2)`.
    fn open(&self, path: &CStr, flags: i32) -> SysResult<i32>;
    /// `write(2)` of the whole buffer.
    fn write(&self, fd: i32, data: &[u8]) -> SysResult<()>;
    /// `close(2)`.
    fn close(&self, fd: i32) -> SysResult<()>;
    /// `execve(2)`: returns only on failure.
    fn execve(
        &self,
        path: &CStr,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> Errno;
}
