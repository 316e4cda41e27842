//! Host process primitives the supervisor needs: start time from `/proc/PID/stat` (to tell a
//! live VMM from a reused pid), pidfds to watch processes we did not spawn, signals, reaping.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Field 22 (`starttime`) of `/proc/PID/stat`, or `None` if the process is gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses `starttime` from a stat line; zombies and dead tasks count as gone. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after the last
/// `)`.
fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); starttime is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// True when `pid` runs and is the same process that started at `start`.
pub fn is_same_process(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid) == Some(start)
}

/// Opens a pidfd for `pid` (readable once the process ends).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to `pid`.
pub fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// Not our child (re-attached after a daemon restart): the status went to its parent.
    Unknown,
}

impl ExitStatus {
    /// A clean end: exit 0 (guest power-off, reboot or a stop request).
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
            ExitStatus::Unknown => f.write_str("unknown"),
        }
    }
}

/// Reaps `pid` if it is our exited child; `Unknown` if it is not our child.
pub fn reap(pid: i32) -> ExitStatus {
    let mut status = 0;
    for _ in 0..500 {
        // SAFETY: waitpid writes the status into a valid local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return ExitStatus::Code(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return ExitStatus::Signal(libc::WTERMSIG(status));
            }
            return ExitStatus::Unknown;
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if r == 0 {
            // Still running as far as waitpid knows (the pidfd fired early): wait briefly.
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        }
        return ExitStatus::Unknown;
    }
    ExitStatus::Unknown
}

/// Resident set size of `pid` in bytes, from `/proc/PID/statm`.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() {
        let line =
            "123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 200";
        assert_eq!(parse_stat(line), Some(987654));
        let zombie = line.replace(") S ", ") Z ");
        assert_eq!(parse_stat(&zombie), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_same() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert!(pidfd_open(me).is_ok());
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by `reap`, which is under test
    fn reap_child_status() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(reap(pid), ExitStatus::Code(3));
        assert_eq!(reap(1), ExitStatus::Unknown);
    }
}
