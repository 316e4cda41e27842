//! The VMM's system-call filter, installed on every thread once the VM is built and before
//! the guest runs (Firecracker's model, as one process-wide list): the calls a running VMM
//! makes — KVM, TAP and terminal ioctls, file and socket I/O for its devices, its API and
//! snapshots, memory management, threads — and nothing that reaches beyond it: no `execve`,
//! no `fork`, no mounts, namespaces, ptrace, BPF, module loading or keyrings. A blocked call
//! stops the VMM with one line naming it (exit status `sandbox::seccomp::EXIT_BLOCKED`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::VmmError;

/// Calls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    // Files: disks, snapshots, the memory file, /proc reads.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_fstat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fadvise64,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_flock,
    // Event loops, timers, signals.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_signalfd4,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_restart_syscall,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    // Memory: guest RAM, the balloon, allocator, thread stacks.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_munlock,
    libc::SYS_mlockall,
    libc::SYS_munlockall,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    // Threads and the process itself.
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_clone3,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_prctl,
    libc::SYS_arch_prctl,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrandom,
    // Sockets: the API, the console socket, vsock's UNIX sockets, TAP configuration.
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_socketpair,
];

/// ioctl request types (bits 8..16 of the request) the VMM uses: KVM (0xAE), terminals and
/// TUN/TAP ('T'), socket interface configuration (0x89), block device sizes (0x12).
const IOCTL_TYPES: &[u64] = &[0xAE, b'T' as u64, 0x89, 0x12];

/// Socket domains: UNIX (API, console, vsock) and INET (interface ioctls for TAPs).
const SOCKET_DOMAINS: &[u64] = &[libc::AF_UNIX as u64, libc::AF_INET as u64];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, VmmError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(seccomp_err)
}

fn seccomp_err(e: seccompiler::BackendError) -> VmmError {
    VmmError::Seccomp(e.to_string())
}

/// One rule per allowed value of argument `arg` (the rules of a call are or-ed).
fn one_of(
    arg: u8,
    op: impl Fn(u64) -> (SeccompCmpOp, u64),
    values: &[u64],
) -> Result<Vec<SeccompRule>, VmmError> {
    values
        .iter()
        .map(|v| {
            let (op, value) = op(*v);
            SeccompRule::new(vec![cond(arg, op, value)?]).map_err(seccomp_err)
        })
        .collect()
}

/// The VMM filters as BPF programs, to be installed in order.
pub fn vmm_filters() -> Result<Vec<BpfProgram>, VmmError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    rules.insert(
        libc::SYS_ioctl,
        one_of(1, |t| (SeccompCmpOp::MaskedEq(0xff00), t << 8), IOCTL_TYPES)?,
    );
    rules.insert(
        libc::SYS_socket,
        one_of(0, |d| (SeccompCmpOp::Eq, d), SOCKET_DOMAINS)?,
    );
    // Threads only: a clone without CLONE_THREAD would be a fork.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        one_of(0, |f| (SeccompCmpOp::MaskedEq(f), f), &[thread])?,
    );
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let allow = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
        .map_err(seccomp_err)?;
    let allow: BpfProgram = allow.try_into().map_err(seccomp_err)?;
    // clone3 passes its flags in memory the filter cannot read: a second filter answers
    // ENOSYS so the C library falls back to clone, whose flags the first one checks. The
    // kernel runs every filter and the strictest answer wins, so the first lists clone3 as
    // allowed and this one turns that into ENOSYS.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(seccomp_err)?;
    // The allow list goes last: once it is in force, installing another filter is blocked.
    Ok(vec![clone3.try_into().map_err(seccomp_err)?, allow])
}

/// Installs the VMM filters on every thread of this process.
pub fn apply() -> Result<(), VmmError> {
    for prog in vmm_filters()? {
        sandbox::seccomp::apply_to_process(&prog).map_err(|e| VmmError::Seccomp(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_fit_the_kernel_limit() {
        let progs = vmm_filters().unwrap();
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }

    #[test]
    fn dangerous_calls_are_not_listed() {
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_kexec_load,
            libc::SYS_keyctl,
            libc::SYS_process_vm_writev,
        ] {
            assert!(!ALLOWED.contains(&nr), "{nr} must not be allowed");
        }
    }
}
