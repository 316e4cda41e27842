//! The `bpf(2)` calls that load a device program and attach it to a cgroup v2 directory,
//! replacing the program attached before (attach the new one first, then detach the old
//! ones: there is no moment without a filter).

use super::program::Insn;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Programs of ours or others already on the group that the query reads back.
const MAX_ATTACHED: usize = 64;
const VERIFIER_LOG_SIZE: usize = 64 * 1024;

/// Loading or attaching a device program failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cannot open cgroup directory {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not in a cgroup v2 hierarchy: device rules need one")]
    NotCgroup2(PathBuf),
    #[error("the kernel refused the device program: {source}; verifier: {log}")]
    Load {
        #[source]
        source: io::Error,
        log: String,
    },
    #[error("cannot {what} the device program on {path}")]
    Attach {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `union bpf_attr`, as zeroed bytes with the fields each command uses written at their
/// offsets (the kernel requires the unused tail to be zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn read_u32(&self, off: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable 128-byte buffer laid out as `union bpf_attr` for
    // `cmd`; every pointer stored in it refers to memory that outlives this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned_fd(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful bpf(2) call that creates a new file
    // descriptor; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn open_cgroup(dir: &Path) -> Result<OwnedFd, BpfError> {
    let open_err = |source| BpfError::Open {
        path: dir.to_path_buf(),
        source,
    };
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| open_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: `c` is a NUL-terminated path; the returned descriptor is checked below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(open_err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor from open(2) that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `statfs` is plain data, fully written by fstatfs on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid out-pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(open_err(io::Error::last_os_error()));
    }
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(BpfError::NotCgroup2(dir.to_path_buf()));
    }
    Ok(fd)
}

fn load(prog: &[Insn]) -> Result<OwnedFd, BpfError> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; VERIFIER_LOG_SIZE];
    let mut attr = Attr::new()
        .u32(0, BPF_PROG_TYPE_CGROUP_DEVICE)
        .u32(4, prog.len() as u32)
        .u64(8, prog.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, BPF_CGROUP_DEVICE);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned_fd(fd)),
        Err(source) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(BpfError::Load {
                source,
                log: String::from_utf8_lossy(&log[..end])
                    .trim()
                    .replace('\n', "; "),
            })
        }
    }
}

/// The ids of the device programs attached to the group now.
fn attached(cgroup: &OwnedFd) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; MAX_ATTACHED];
    let mut attr = Attr::new()
        .u32(0, cgroup.as_raw_fd() as u32)
        .u32(4, BPF_CGROUP_DEVICE)
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, MAX_ATTACHED as u32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr.read_u32(24) as usize).min(MAX_ATTACHED);
    Ok(ids[..count].to_vec())
}

/// Loads `prog` and makes it the group's only device program.
pub fn attach(dir: &Path, prog: &[Insn]) -> Result<(), BpfError> {
    let attach_err = |what, source| BpfError::Attach {
        what,
        path: dir.to_path_buf(),
        source,
    };
    let cgroup = open_cgroup(dir)?;
    let old = attached(&cgroup).map_err(|e| attach_err("query", e))?;
    let new = load(prog)?;
    let mut attr = Attr::new()
        .u32(0, cgroup.as_raw_fd() as u32)
        .u32(4, new.as_raw_fd() as u32)
        .u32(8, BPF_CGROUP_DEVICE)
        .u32(12, BPF_F_ALLOW_MULTI);
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| attach_err("attach", e))?;
    for id in old {
        let mut by_id = Attr::new().u32(0, id);
        let old_fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id) {
            Ok(fd) => owned_fd(fd),
            // Detached meanwhile by someone else: nothing left to do for it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(attach_err("find the previous", e)),
        };
        let mut detach = Attr::new()
            .u32(0, cgroup.as_raw_fd() as u32)
            .u32(4, old_fd.as_raw_fd() as u32)
            .u32(8, BPF_CGROUP_DEVICE);
        bpf(BPF_PROG_DETACH, &mut detach).map_err(|e| attach_err("detach the previous", e))?;
    }
    Ok(())
}
