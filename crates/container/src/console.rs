//! The container's terminal: a pty pair, handed out over a console socket (OCI) or proxied
//! to the caller's terminal (`kapsel container run -t`).

use crate::error::ContainerError;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A pty: the master stays with the runtime, the slave becomes the container's console.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub slave_path: PathBuf,
}

/// Opens a pty pair, optionally with a window size.
pub fn open_pty(size: Option<(u16, u16)>) -> Result<Pty, ContainerError> {
    let mut master = -1;
    let mut slave = -1;
    let ws = size.map(|(rows, cols)| libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let ws_ptr = ws
        .as_ref()
        .map_or(std::ptr::null(), |w| w as *const libc::winsize);
    // SAFETY: master/slave are out-parameters; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            ws_ptr,
        )
    };
    if rc < 0 {
        return Err(ContainerError::last_os("openpty"));
    }
    // SAFETY: openpty returned two fresh descriptors we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: setting FD_CLOEXEC on our own descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: buf is writable for its length.
    let rc = unsafe { libc::ttyname_r(slave.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return Err(ContainerError::Io {
            op: "ttyname".into(),
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    // SAFETY: ttyname_r wrote a NUL-terminated string into buf.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(Pty {
        master,
        slave,
        slave_path: PathBuf::from(name.to_string_lossy().into_owned()),
    })
}

/// Sends `fd` over the UNIX socket at `path` (SCM_RIGHTS), as `runc --console-socket` does.
pub fn send_fd(path: &Path, fd: RawFd) -> Result<(), ContainerError> {
    let sock = UnixStream::connect(path)
        .map_err(ContainerError::io(format!("connect {}", path.display())))?;
    let mut data = *b"console";
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg has a control buffer of CMSG_SPACE(sizeof fd) bytes, so the first header
    // and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } < 0 {
        return Err(ContainerError::last_os("sendmsg console"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_has_a_dev_pts_slave() {
        let pty = open_pty(Some((24, 80))).unwrap();
        assert!(
            pty.slave_path.starts_with("/dev/pts"),
            "{:?}",
            pty.slave_path
        );
    }
}
