//! `kapsel exec NAME [-t] -- COMMAND...`: runs a command in a running container through the
//! daemon and exits with its exit code. Without `-t` the daemon collects the output and this
//! prints it at the end; with `-t` the command runs on a pty and the session is interactive
//! (the connection upgraded to `api::exec_stream` frames): stdin (a terminal in raw mode, or
//! a pipe) goes to the command's terminal, its output comes back as it is written, and the
//! window size follows this terminal's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use api::daemon::{ExecRequest, TermSize};
use api::exec_stream::Frame;
use clap::Args;
use client::daemon::DaemonClient;
use client::Endpoint;

use super::{Conn, VerbError};

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub name: String,
    /// Run the command interactively on a terminal: stdin is forwarded, output streams
    /// (its errors arrive with its output).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Kill the command after this many seconds (default 60; with -t, no limit).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs the command; `Ok` carries the command's exit code.
pub fn run(a: ExecArgs) -> Result<ExitCode, VerbError> {
    if a.tty {
        return interactive(a);
    }
    let req = ExecRequest {
        command: a.command,
        tty: false,
        timeout_secs: a.timeout,
        interactive: false,
        size: None,
    };
    let wait = std::time::Duration::from_secs(a.timeout.unwrap_or(60) + 30);
    let client = DaemonClient::new(Endpoint::new(&a.conn.socket).with_timeout(wait));
    let r = client.exec(&a.name, &req).map_err(VerbError::from)?;
    let _ = std::io::stdout().write_all(r.stdout.as_bytes());
    let _ = std::io::stderr().write_all(r.stderr.as_bytes());
    Ok(exit_code(r.exit_code))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// This terminal's size (stdout's, else stdin's), if either is a terminal.
fn window_size() -> Option<TermSize> {
    [1, 0].into_iter().find_map(|fd| {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it from a descriptor we hold.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
        (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some(TermSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    })
}

fn sigwinch_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        set
    }
}

fn interactive(a: ExecArgs) -> Result<ExitCode, VerbError> {
    let req = ExecRequest {
        command: a.command,
        tty: true,
        timeout_secs: a.timeout,
        interactive: true,
        size: window_size(),
    };
    let client = DaemonClient::new(Endpoint::new(&a.conn.socket));
    let mut stream = client
        .exec_interactive(&a.name, &req)
        .map_err(VerbError::from)?;
    let io_err = |what: &str| {
        let what = what.to_string();
        move |source| VerbError::Io { what, source }
    };
    let writer = Arc::new(Mutex::new(
        stream
            .try_clone()
            .map_err(io_err("cannot clone the exec connection"))?,
    ));
    let send = |w: &Arc<Mutex<UnixStream>>, bytes: &[u8]| -> bool {
        w.lock().is_ok_and(|mut s| s.write_all(bytes).is_ok())
    };
    let terminal = vmm::console::RawTerminal::enable(0);
    if terminal.is_some() {
        // SIGWINCH is blocked in this thread before any other starts (they inherit the
        // mask), so only the watcher below takes it, with sigwait.
        let set = sigwinch_set();
        // SAFETY: changing this thread's signal mask with a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        let w = writer.clone();
        std::thread::spawn(move || loop {
            let mut sig = 0;
            // SAFETY: waiting for a signal of a valid set into a local.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if let Some(TermSize { rows, cols }) = window_size() {
                if !send(&w, &Frame::Resize { rows, cols }.encode()) {
                    return;
                }
            }
        });
    }
    let w = writer.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    send(&w, &Frame::StdinEof.encode());
                    return;
                }
                Ok(n) => {
                    if !send(&w, &Frame::data_frames(&buf[..n], Frame::Stdin)) {
                        return;
                    }
                }
            }
        }
    });
    let mut stdout = std::io::stdout();
    let ended = loop {
        match Frame::read(&mut stream) {
            Ok(Some(Frame::Output(data))) => {
                let _ = stdout.write_all(&data);
                let _ = stdout.flush();
            }
            Ok(Some(Frame::Exit(code))) => break Ok(code),
            Ok(Some(_)) => {}
            Ok(None) => break Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Err(e) => break Err(e),
        }
    };
    drop(terminal);
    ended.map(exit_code).map_err(io_err(
        "the exec session ended without the command's exit code",
    ))
}
