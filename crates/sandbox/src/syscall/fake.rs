//! A [`Syscall`] that records every call instead of making it, for unit tests without root.

use super::{Errno, Ids, SysResult, Syscall};
use std::cell::RefCell;
use std::ffi::CStr;

/// One recorded call, with its arguments as owned values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
    },
    Umount2(String, i32),
    PivotRoot(String, String),
    Chdir(String),
    Mkdir(String),
    Touch(String),
    Mknod(String, u32, u64),
    Symlink(String, String),
    Sethostname(String),
    Unshare(i32),
    Setns(i32, i32),
    WriteFile(String, Vec<u8>),
    Setrlimit(u32, u64, u64),
    NoNewPrivs,
    KeepCaps(bool),
    DropBoundingCap(u32),
    Capset(u64, u64, u64),
    Ambient(u64),
    SetIds(Ids, Vec<u32>),
    Seccomp(usize),
    Setsid,
    SetConsole(i32),
    Open(String, i32),
    Write(i32, Vec<u8>),
    Close(i32),
    Execve(String, usize),
}

impl Call {
    /// A short name of the call kind, used to inject failures.
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Mount { .. } => "mount",
            Call::Umount2(..) => "umount2",
            Call::PivotRoot(..) => "pivot_root",
            Call::Chdir(_) => "chdir",
            Call::Mkdir(_) => "mkdir",
            Call::Touch(_) => "touch",
            Call::Mknod(..) => "mknod",
            Call::Symlink(..) => "symlink",
            Call::Sethostname(_) => "sethostname",
            Call::Unshare(_) => "unshare",
            Call::Setns(..) => "setns",
            Call::WriteFile(..) => "write_file",
            Call::Setrlimit(..) => "setrlimit",
            Call::NoNewPrivs => "no_new_privs",
            Call::KeepCaps(_) => "keep_caps",
            Call::DropBoundingCap(_) => "drop_bounding_cap",
            Call::Capset(..) => "capset",
            Call::Ambient(_) => "ambient",
            Call::SetIds(..) => "set_ids",
            Call::Seccomp(_) => "seccomp",
            Call::Setsid => "setsid",
            Call::SetConsole(_) => "set_console",
            Call::Open(..) => "open",
            Call::Write(..) => "write",
            Call::Close(_) => "close",
            Call::Execve(..) => "execve",
        }
    }
}

/// Records calls; optionally fails the first call of one kind.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<Call>>,
    fail: Option<(&'static str, Errno)>,
}

fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

impl RecordingSyscall {
    /// A fake that succeeds on every call.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that fails every call of `kind` (see [`Call::kind`]) with `errno`.
    pub fn failing(kind: &'static str, errno: i32) -> Self {
        Self {
            calls: RefCell::default(),
            fail: Some((kind, Errno(errno))),
        }
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Position of the first call matching `pred`.
    pub fn position(&self, pred: impl Fn(&Call) -> bool) -> Option<usize> {
        self.calls.borrow().iter().position(pred)
    }

    fn record(&self, call: Call) -> SysResult<()> {
        let kind = call.kind();
        self.calls.borrow_mut().push(call);
        match self.fail {
            Some((k, e)) if k == kind => Err(e),
            _ => Ok(()),
        }
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: u64,
        data: Option<&CStr>,
    ) -> SysResult<()> {
        self.record(Call::Mount {
            source: source.map(s),
            target: s(target),
            fstype: fstype.map(s),
            flags,
            data: data.map(s),
        })
    }
    fn umount2(&self, target: &CStr, flags: i32) -> SysResult<()> {
        self.record(Call::Umount2(s(target), flags))
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult<()> {
        self.record(Call::PivotRoot(s(new_root), s(put_old)))
    }
    fn chdir(&self, path: &CStr) -> SysResult<()> {
        self.record(Call::Chdir(s(path)))
    }
    fn mkdir(&self, path: &CStr, _mode: u32) -> SysResult<()> {
        self.record(Call::Mkdir(s(path)))
    }
    fn touch(&self, path: &CStr) -> SysResult<()> {
        self.record(Call::Touch(s(path)))
    }
    fn mknod(&self, path: &CStr, mode: u32, dev: u64, _ids: Ids) -> SysResult<()> {
        self.record(Call::Mknod(s(path), mode, dev))
    }
    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult<()> {
        self.record(Call::Symlink(s(target), s(link)))
    }
    fn sethostname(&self, name: &[u8]) -> SysResult<()> {
        self.record(Call::Sethostname(
            String::from_utf8_lossy(name).into_owned(),
        ))
    }
    fn unshare(&self, flags: i32) -> SysResult<()> {
        self.record(Call::Unshare(flags))
    }
    fn setns(&self, fd: i32, nstype: i32) -> SysResult<()> {
        self.record(Call::Setns(fd, nstype))
    }
    fn write_file(&self, path: &CStr, data: &[u8]) -> SysResult<()> {
        self.record(Call::WriteFile(s(path), data.to_vec()))
    }
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult<()> {
        self.record(Call::Setrlimit(resource, soft, hard))
    }
    fn set_no_new_privs(&self) -> SysResult<()> {
        self.record(Call::NoNewPrivs)
    }
    fn set_keep_caps(&self, on: bool) -> SysResult<()> {
        self.record(Call::KeepCaps(on))
    }
    fn drop_bounding_cap(&self, cap: u32) -> SysResult<()> {
        self.record(Call::DropBoundingCap(cap))
    }
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> SysResult<()> {
        self.record(Call::Capset(effective, permitted, inheritable))
    }
    fn set_ambient(&self, ambient: u64) -> SysResult<()> {
        self.record(Call::Ambient(ambient))
    }
    fn set_ids(&self, ids: Ids, additional_gids: &[libc::gid_t]) -> SysResult<()> {
        self.record(Call::SetIds(ids, additional_gids.to_vec()))
    }
    fn seccomp(&self, filter: &[libc::sock_filter]) -> SysResult<()> {
        self.record(Call::Seccomp(filter.len()))
    }
    fn setsid(&self) -> SysResult<()> {
        self.record(Call::Setsid)
    }
    fn set_console(&self, fd: i32) -> SysResult<()> {
        self.record(Call::SetConsole(fd))
    }
    fn open(&self, path: &CStr, flags: i32) -> SysResult<i32> {
        self.record(Call::Open(s(path), flags)).map(|()| 100)
    }
    fn write(&self, fd: i32, data: &[u8]) -> SysResult<()> {
        self.record(Call::Write(fd, data.to_vec()))
    }
    fn close(&self, fd: i32) -> SysResult<()> {
        self.record(Call::Close(fd))
    }
    fn execve(
        &self,
        path: &CStr,
        argv: &[*const libc::c_char],
        _envp: &[*const libc::c_char],
    ) -> Errno {
        let _ = self.record(Call::Execve(s(path), argv.len().saturating_sub(1)));
        Errno(libc::ENOENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_calls_in_order_and_injects_failures() {
        let fake = RecordingSyscall::failing("pivot_root", libc::EINVAL);
        assert!(fake.chdir(c"/r").is_ok());
        assert_eq!(fake.pivot_root(c".", c"."), Err(Errno(libc::EINVAL)));
        assert_eq!(
            fake.calls(),
            vec![
                Call::Chdir("/r".into()),
                Call::PivotRoot(".".into(), ".".into())
            ]
        );
    }
}
