//! The API socket's thread: accepts connections one at a time, parses a request, passes it
//! to the control loop and writes back the answer.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use kapsel_http::Response;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::error_response;
use super::routes::{route, ApiRequest};
use crate::VmmError;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the control loop may take to answer (snapshots of large guests take a while).
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// The control loop's end of the API: requests arrive on `requests`; `evt` is written for
/// each one so the loop can wait on it with epoll.
pub struct ApiServer {
    pub requests: Receiver<(ApiRequest, Sender<Response>)>,
    pub evt: EventFd,
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path) -> Result<UnixListener, VmmError> {
    // A socket file left by a process that died is replaced; anything else is an error.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    UnixListener::bind(path).map_err(|source| VmmError::ApiSocket {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds `path` and starts the API thread.
pub fn spawn_api_server(path: &Path) -> Result<ApiServer, VmmError> {
    let listener = bind(path)?;
    let evt = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    let wake = evt.try_clone().map_err(VmmError::EventFd)?;
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || serve(&listener, &tx, &wake))
        .map_err(|source| VmmError::Thread {
            name: "api".into(),
            source,
        })?;
    Ok(ApiServer {
        requests: rx,
        evt,
        path: path.to_path_buf(),
    })
}

fn serve(listener: &UnixListener, tx: &Sender<(ApiRequest, Sender<Response>)>, wake: &EventFd) {
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
        let response = match kapsel_http::read_request(&mut stream) {
            Err(e) => error_response(400, e.to_string()),
            Ok(req) => match route(&req) {
                Err(resp) => resp,
                Ok(op) => {
                    let (reply_tx, reply_rx) = channel();
                    if tx.send((op, reply_tx)).is_err() {
                        return;
                    }
                    let _ = wake.write(1);
                    reply_rx
                        .recv_timeout(REPLY_TIMEOUT)
                        .unwrap_or_else(|_| error_response(503, "the VM did not answer"))
                }
            },
        };
        let _ = kapsel_http::write_response(&mut stream, &response);
    }
}
