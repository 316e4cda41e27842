//! vsock-tool: move bytes over vsock (guest) or kapsel's UNIX-socket side of it (host).
//!
//! ```text
//! vsock-tool listen PORT            guest: accept one vsock connection, copy it to stdout
//! vsock-tool connect CID PORT       guest: send stdin, then copy the reply to stdout
//! vsock-tool uds-connect PATH PORT  host: CONNECT PORT on PATH, send stdin, copy reply
//! vsock-tool uds-listen PATH        host: accept one connection on PATH, copy it to stdout
//! ```
//! Each direction is copied until end of file; the sending side then shuts down its write
//! half. Exit status 0 on success; the byte counts go to stderr.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call, result checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A connected vsock stream as a UnixStream-like file (read/write/shutdown work on any socket).
fn as_stream(fd: OwnedFd) -> UnixStream {
    UnixStream::from(fd)
}

fn listen(port: u32) -> io::Result<UnixStream> {
    let s = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    check(unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    })?;
    // SAFETY: listen on our socket.
    check(unsafe { libc::listen(s.as_raw_fd(), 1) })?;
    eprintln!("vsock-tool: listening on port {port}");
    // SAFETY: accept without peer address.
    let c = unsafe {
        libc::accept4(
            s.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    check(c)?;
    // SAFETY: fresh fd from accept.
    Ok(as_stream(unsafe { OwnedFd::from_raw_fd(c) }))
}

fn connect(cid: u32, port: u32) -> io::Result<UnixStream> {
    let s = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    check(unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    })?;
    Ok(as_stream(s))
}

fn copy(mut from: impl Read, mut to: impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    to.flush()?;
    Ok(total)
}

/// Sends stdin, shuts down writing, copies what comes back to stdout.
fn exchange(stream: UnixStream) -> io::Result<()> {
    let sent = copy(io::stdin().lock(), &stream)?;
    stream.shutdown(Shutdown::Write)?;
    let got = copy(&stream, io::stdout().lock())?;
    eprintln!("vsock-tool: sent {sent} bytes, received {got} bytes");
    Ok(())
}

fn receive(stream: UnixStream) -> io::Result<()> {
    let got = copy(&stream, io::stdout().lock())?;
    eprintln!("vsock-tool: received {got} bytes");
    Ok(())
}

fn num(s: Option<&String>) -> io::Result<u32> {
    s.and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "expected a number"))
}

fn run(args: &[String]) -> io::Result<()> {
    match args.first().map(String::as_str) {
        Some("listen") => receive(listen(num(args.get(1))?)?),
        Some("connect") => exchange(connect(num(args.get(1))?, num(args.get(2))?)?),
        Some("uds-connect") => {
            let path = args.get(1).ok_or(io::ErrorKind::InvalidInput)?;
            let port = num(args.get(2))?;
            let mut s = UnixStream::connect(path)?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            // read the reply byte by byte: what follows it is connection data
            let mut line = Vec::new();
            let mut reader = BufReader::with_capacity(1, &s);
            reader.read_until(b'\n', &mut line)?;
            let text = String::from_utf8_lossy(&line);
            if !text.starts_with("OK ") {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("no OK from kapsel (got {:?})", text.trim()),
                ));
            }
            eprintln!("vsock-tool: {}", text.trim());
            exchange(s)
        }
        Some("uds-listen") => {
            let path = args.get(1).ok_or(io::ErrorKind::InvalidInput)?;
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            eprintln!("vsock-tool: listening on {path}");
            let (s, _) = l.accept()?;
            receive(s)
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: vsock-tool listen PORT | connect CID PORT | uds-connect PATH PORT | uds-listen PATH",
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsock-tool: {e}");
            ExitCode::FAILURE
        }
    }
}
