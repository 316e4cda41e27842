//! Installing a filter on every thread of the process, with a `SIGSYS` handler that names
//! the blocked system call on stderr before the process exits — so a filter that is too
//! strict shows up as one clear line, not as a silent kill.

use seccompiler::BpfProgram;
use std::io;

/// Exit status of a process stopped by its own filter (128 + SIGSYS, as a shell reports a
/// process killed by that signal).
pub const EXIT_BLOCKED: i32 = 128 + libc::SIGSYS;

/// Offset of `si_syscall` in the `siginfo_t` of a `SIGSYS` (after `si_signo`, `si_errno`,
/// `si_code`, padding, and `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

/// Appends `n` in decimal to `buf` at `len`; async-signal-safe (no allocation).
fn put_number(buf: &mut [u8], mut len: usize, n: i64) -> usize {
    let mut digits = [0u8; 20];
    let (mut v, mut i) = (n.unsigned_abs(), 0);
    loop {
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        i += 1;
        if v == 0 {
            break;
        }
    }
    if n < 0 && len < buf.len() {
        buf[len] = b'-';
        len += 1;
    }
    while i > 0 && len < buf.len() {
        i -= 1;
        buf[len] = digits[i];
        len += 1;
    }
    len
}

fn put(buf: &mut [u8], len: usize, s: &[u8]) -> usize {
    let n = s.len().min(buf.len() - len);
    buf[len..len + n].copy_from_slice(&s[..n]);
    len + n
}

/// The message for blocked syscall `nr`, built without allocating.
fn blocked_message(buf: &mut [u8; 160], nr: i64) -> usize {
    let mut len = put(buf, 0, b"kapsel: the seccomp filter blocked system call ");
    len = put(buf, len, super::syscall_name(nr).unwrap_or("?").as_bytes());
    len = put(buf, len, b" (");
    len = put_number(buf, len, nr);
    put(buf, len, b"); stopping\n")
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; for SECCOMP_RET_TRAP it holds
    // the syscall number at `si_syscall` (an i32 at this fixed offset on x86_64/aarch64).
    let nr = unsafe {
        std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32)
    };
    let mut buf = [0u8; 160];
    let len = blocked_message(&mut buf, i64::from(nr));
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf[..len]` is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_BLOCKED);
    }
}

/// Installs the `SIGSYS` handler, then `filter` on every thread of the process (threads
/// created later inherit it). Needs `no_new_privs`, which seccompiler sets.
pub fn apply_to_process(filter: &BpfProgram) -> io::Result<()> {
    // SAFETY: sigaction is plain data, zeroed then filled in; the handler is an
    // `extern "C"` function with the SA_SIGINFO signature that only calls async-signal-safe
    // functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    seccompiler::apply_filter_all_threads(filter).map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_call_and_its_number() {
        let mut buf = [0u8; 160];
        let len = blocked_message(&mut buf, 59);
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "kapsel: the seccomp filter blocked system call execve (59); stopping\n"
        );
        let len = blocked_message(&mut buf, 9999);
        assert!(std::str::from_utf8(&buf[..len])
            .unwrap()
            .contains("call ? (9999)"));
    }
}
