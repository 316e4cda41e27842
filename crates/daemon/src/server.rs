//! The API server: a UNIX socket, one thread per connection (bounded), one request per
//! connection. Event streams keep their connection open and write one JSON line per event.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kapsel_http::Response;

use crate::error::{DaemonError, Result};
use crate::routes::{error_response, route, Reply};
use crate::state::Daemon;

/// Connections served at once; more get a 503.
const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the API socket; refuses if another daemon answers on it.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        return Err(DaemonError::Conflict(format!(
            "another daemon is listening on {}",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DaemonError::io("create", dir, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| DaemonError::io("bind", path, e))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(listener)
}

/// Accepts connections forever.
pub fn serve(d: Arc<Daemon>, listener: UnixListener) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else {
            continue;
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let e = DaemonError::Conflict("too many connections".into());
            let mut r = error_response(&e);
            r.status = 503;
            let _ = kapsel_http::write_response(&mut stream, &r);
            continue;
        }
        let d = d.clone();
        let counter = active.clone();
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .stack_size(256 << 10)
            .spawn(move || {
                handle(&d, stream);
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn handle(d: &Daemon, mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let req = match kapsel_http::read_request(&mut stream) {
        Ok(r) => r,
        Err(e) => {
            let body = serde_json::to_vec(&api::ErrorBody {
                error: e.to_string(),
            })
            .unwrap_or_default();
            let status = match e {
                kapsel_http::HttpError::BodyTooLarge(_) => 413,
                _ => 400,
            };
            let _ = kapsel_http::write_response(&mut stream, &Response::json(status, body));
            return;
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        route(d, &req.method, &req.path, &req.body)
    }));
    let reply = match result {
        Ok(r) => r,
        Err(_) => Err(DaemonError::Corrupt(
            "internal error (handler panicked)".into(),
        )),
    };
    tracing::debug!(method = %req.method, path = %req.path, ok = reply.is_ok(), "request");
    let response = match reply {
        Ok(Reply::Json(status, body)) => Response::json(status, body),
        Ok(Reply::Empty) => Response::json(204, Vec::new()),
        Ok(Reply::Text(text)) => {
            let _ = write_text(&mut stream, &text);
            return;
        }
        Ok(Reply::Events { since, follow }) => {
            stream_events(d, stream, since, follow);
            return;
        }
        Ok(Reply::ExecTty(session)) => {
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {}\r\nConnection: Upgrade\r\n\r\n",
                api::exec_stream::UPGRADE
            );
            // A client already gone is seen (and the command hung up) by the relay.
            let _ = stream.write_all(head.as_bytes());
            session.serve(d, stream);
            return;
        }
        Err(e) => error_response(&e),
    };
    let _ = kapsel_http::write_response(&mut stream, &response);
}

fn write_text(stream: &mut UnixStream, text: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(text.as_bytes())
}

/// Writes stored events after `since` as JSON lines, then (with `follow`) new ones as they
/// happen until the client goes away.
fn stream_events(d: &Daemon, mut stream: UnixStream, since: i64, follow: bool) {
    let rx = follow.then(|| d.events.subscribe());
    let past = match d.db().events(since, 1000) {
        Ok(p) => p,
        Err(e) => {
            let _ = kapsel_http::write_response(&mut stream, &error_response(&e));
            return;
        }
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut last = since;
    for ev in past {
        last = ev.id;
        if write_event(&mut stream, &ev).is_err() {
            return;
        }
    }
    let Some(rx) = rx else {
        return;
    };
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(ev) if ev.id != 0 && ev.id <= last => {}
            Ok(ev) => {
                if write_event(&mut stream, &ev).is_err() {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // A blank keep-alive line tells a dead client from a quiet host.
                if stream.write_all(b"\n").is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

fn write_event(stream: &mut UnixStream, ev: &api::daemon::Event) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(ev).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}
