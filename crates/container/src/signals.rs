//! Signals delivered through a signalfd, as the foreground supervisor and the daemon's
//! container monitor receive them.

use std::os::fd::RawFd;

/// The set holding `signals`.
pub fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// The next signal waiting on signalfd `fd`, or `None` if no whole record could be read.
pub fn read_signal(fd: RawFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading one record into `info`.
    let r = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    (r as usize == size).then_some(info.ssi_signo as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_signalfd() {
        let set = sigset(&[libc::SIGUSR1]);
        // SAFETY: blocking SIGUSR1 for this test thread, creating a signalfd for it and
        // raising it at this thread only; the fd is closed at the end.
        unsafe {
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            assert!(fd >= 0);
            assert_eq!(read_signal(fd), None, "nothing pending yet");
            libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1);
            assert_eq!(read_signal(fd), Some(libc::SIGUSR1));
            libc::close(fd);
        }
    }
}
