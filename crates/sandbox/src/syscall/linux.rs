//! The real [`Syscall`]: thin `libc` wrappers that never allocate.

use super::{Errno, Ids, SysResult, Syscall};
use std::ffi::CStr;
use std::ptr;

/// Calls straight into the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn check(ret: libc::c_long) -> SysResult<()> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

fn prctl(op: i32, arg2: libc::c_ulong, arg3: libc::c_ulong) -> SysResult<()> {
    // SAFETY: every prctl used here takes integer arguments only.
    check(unsafe { libc::prctl(op, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) }.into())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: u64,
        data: Option<&CStr>,
    ) -> SysResult<()> {
        // SAFETY: all pointers are NUL-terminated strings or null, alive for the call.
        let ret = unsafe {
            libc::mount(
                opt_ptr(source),
                target.as_ptr(),
                opt_ptr(fstype),
                flags as libc::c_ulong,
                opt_ptr(data).cast(),
            )
        };
        check(ret.into())
    }

    fn umount2(&self, target: &CStr, flags: i32) -> SysResult<()> {
        // SAFETY: target is a valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) }.into())
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult<()> {
        // SAFETY: both arguments are valid C strings; pivot_root has no libc wrapper.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
    }

    fn chdir(&self, path: &CStr) -> SysResult<()> {
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chdir(path.as_ptr()) }.into())
    }

    fn mkdir(&self, path: &CStr, mode: u32) -> SysResult<()> {
        // SAFETY: path is a valid C string.
        match check(unsafe { libc::mkdir(path.as_ptr(), mode) }.into()) {
            Err(Errno(libc::EEXIST)) => Ok(()),
            other => other,
        }
    }

    fn touch(&self, path: &CStr) -> SysResult<()> {
        // SAFETY: path is a valid C string; the returned fd is closed below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        self.close(fd)
    }

    fn mknod(&self, path: &CStr, mode: u32, dev: u64, ids: Ids) -> SysResult<()> {
        // SAFETY: path is a valid C string.
        match check(unsafe { libc::mknod(path.as_ptr(), mode, dev) }.into()) {
            Ok(()) | Err(Errno(libc::EEXIST)) => {}
            Err(e) => return Err(e),
        }
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chown(path.as_ptr(), ids.uid, ids.gid) }.into())
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult<()> {
        // SAFETY: both are valid C strings.
        match check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }.into()) {
            Err(Errno(libc::EEXIST)) => Ok(()),
            other => other,
        }
    }

    fn sethostname(&self, name: &[u8]) -> SysResult<()> {
        // SAFETY: the pointer and length describe `name`.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into())
    }

    fn unshare(&self, flags: i32) -> SysResult<()> {
        // SAFETY: unshare takes only flags.
        check(unsafe { libc::unshare(flags) }.into())
    }

    fn setns(&self, fd: i32, nstype: i32) -> SysResult<()> {
        // SAFETY: setns takes a descriptor and flags.
        check(unsafe { libc::setns(fd, nstype) }.into())
    }

    fn write_file(&self, path: &CStr, data: &[u8]) -> SysResult<()> {
        let fd = self.open(path, libc::O_WRONLY | libc::O_CLOEXEC)?;
        let res = self.write(fd, data);
        let _ = self.close(fd);
        res
    }

    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult<()> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: lim is a valid rlimit for the duration of the call.
        check(unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &lim) }.into())
    }

    fn set_no_new_privs(&self) -> SysResult<()> {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
    }

    fn set_keep_caps(&self, on: bool) -> SysResult<()> {
        prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0)
    }

    fn drop_bounding_cap(&self, cap: u32) -> SysResult<()> {
        match prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0) {
            Err(Errno(libc::EINVAL)) => Ok(()),
            other => other,
        }
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> SysResult<()> {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: effective as u32,
                permitted: permitted as u32,
                inheritable: inheritable as u32,
            },
            CapData {
                effective: (effective >> 32) as u32,
                permitted: (permitted >> 32) as u32,
                inheritable: (inheritable >> 32) as u32,
            },
        ];
        // SAFETY: header and the two-element data array match the v3 capset ABI.
        check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })
    }

    fn set_ambient(&self, ambient: u64) -> SysResult<()> {
        let ambient_op = libc::PR_CAP_AMBIENT;
        prctl(
            ambient_op,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
        )?;
        for cap in 0..64u32 {
            if ambient & (1 << cap) != 0 {
                let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                prctl(ambient_op, raise, libc::c_ulong::from(cap))?;
            }
        }
        Ok(())
    }

    fn set_ids(&self, ids: Ids, additional_gids: &[libc::gid_t]) -> SysResult<()> {
        // Raw syscalls, not the libc wrappers: glibc's setgroups/setresuid broadcast the
        // change to every thread it knows of, and in a child cloned from a multi-threaded
        // process it waits forever for threads that were not copied.
        // SAFETY: pointer and length describe `additional_gids`.
        check(unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                additional_gids.len(),
                additional_gids.as_ptr(),
            )
        })?;
        // SAFETY: integer arguments only; sets the ids of this (only) thread.
        check(unsafe { libc::syscall(libc::SYS_setresgid, ids.gid, ids.gid, ids.gid) })?;
        // SAFETY: as above.
        check(unsafe { libc::syscall(libc::SYS_setresuid, ids.uid, ids.uid, ids.uid) })
    }

    fn seccomp(&self, filter: &[libc::sock_filter]) -> SysResult<()> {
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at `filter`, which outlives the call; the kernel copies it.
        check(unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        })
    }

    fn setsid(&self) -> SysResult<()> {
        // SAFETY: no arguments.
        check(unsafe { libc::setsid() }.into())
    }

    fn set_console(&self, fd: i32) -> SysResult<()> {
        // SAFETY: fd is an open terminal; TIOCSCTTY takes an integer argument.
        check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }.into())?;
        for target in 0..3 {
            // SAFETY: dup2 on valid descriptors.
            check(unsafe { libc::dup2(fd, target) }.into())?;
        }
        Ok(())
    }

    fn open(&self, path: &CStr, flags: i32) -> SysResult<i32> {
        // SAFETY: path is a valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), flags, 0o600) };
        if fd < 0 {
            Err(Errno::last())
        } else {
            Ok(fd)
        }
    }

    fn write(&self, fd: i32, mut data: &[u8]) -> SysResult<()> {
        while !data.is_empty() {
            // SAFETY: pointer and length describe `data`.
            let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            if n < 0 {
                let e = Errno::last();
                if e.0 == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            data = &data[n as usize..];
        }
        Ok(())
    }

    fn close(&self, fd: i32) -> SysResult<()> {
        // SAFETY: closing a descriptor this code owns.
        check(unsafe { libc::close(fd) }.into())
    }

    fn execve(
        &self,
        path: &CStr,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> Errno {
        debug_assert!(argv.last().is_some_and(|p| p.is_null()));
        debug_assert!(envp.last().is_some_and(|p| p.is_null()));
        // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Errno::last()
    }
}
