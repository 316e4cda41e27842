//! `kapsel console NAME`: attach the terminal to the instance's serial console socket
//! (served by its VMM, so it works whatever the daemon does). Ctrl-] detaches; the guest
//! keeps running.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use clap::Args;

use super::{Conn, VerbError, VerbResult};

/// Ctrl-], the detach key (as in virsh and telnet).
const DETACH: u8 = 0x1d;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(a: ConsoleArgs) -> VerbResult {
    let inst = a.conn.client().get(&a.name).map_err(VerbError::from)?;
    let Some(path) = inst.console else {
        return Err(VerbError::Usage(format!(
            "instance '{}' is {}: no console to attach to",
            a.name,
            inst.status.as_str()
        )));
    };
    let stream = UnixStream::connect(&path).map_err(|source| VerbError::Io {
        what: format!("cannot connect to the console at {path}"),
        source,
    })?;
    let terminal = vmm::console::RawTerminal::enable(0);
    if terminal.is_some() {
        eprint!("Connected to {} (detach with Ctrl-])\r\n", a.name);
    }
    let mut out = stream.try_clone().map_err(|source| VerbError::Io {
        what: "cannot clone the console socket".into(),
        source,
    })?;
    // Guest output to stdout until the VMM closes the socket.
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
    });
    // Keyboard to the guest until Ctrl-] or EOF on stdin.
    let mut input = stream;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if let Some(pos) = chunk.iter().position(|&b| b == DETACH) {
            let _ = input.write_all(&chunk[..pos]);
            break;
        }
        if input.write_all(chunk).is_err() {
            break;
        }
        if reader.is_finished() {
            break;
        }
    }
    if terminal.is_none() {
        // Not a terminal (scripts, tests): stdin ended; show output until the VMM closes
        // the console or a short grace period passes.
        let _ = input.shutdown(std::net::Shutdown::Write);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let _ = input.shutdown(std::net::Shutdown::Both);
    drop(terminal);
    if !reader.is_finished() {
        let _ = reader.join();
    }
    eprint!("\r\nDetached from {}\r\n", a.name);
    Ok(())
}
