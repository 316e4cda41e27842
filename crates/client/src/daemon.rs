//! Client for the host daemon's API (see [`api::daemon`]).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;

use api::daemon::{
    CopyRequest, CreateInstance, CreateNetwork, CreateSnapshot, Event, ExecRequest, ExecResult,
    HostInfo, Image, ImportImage, Instance, InstanceUpdate, Network, Snapshot, StopRequest,
};

use crate::{ClientError, Endpoint};

/// The daemon's API socket.
#[derive(Debug, Clone)]
pub struct DaemonClient {
    endpoint: Endpoint,
}

/// Percent-encodes nothing: names are validated by the daemon to `[a-z0-9-]`; anything else
/// is rejected before it reaches a path.
fn name(n: &str) -> Result<&str, ClientError> {
    if n.is_empty()
        || !n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(ClientError::Status {
            status: 400,
            message: format!("invalid name {n:?}: only a-z, 0-9 and '-' are allowed"),
        });
    }
    Ok(n)
}

impl DaemonClient {
    pub fn new(endpoint: Endpoint) -> Self {
        DaemonClient { endpoint }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn host(&self) -> Result<HostInfo, ClientError> {
        self.endpoint.request::<(), _>("GET", "/v1/host", None)
    }

    pub fn list(&self) -> Result<Vec<Instance>, ClientError> {
        self.endpoint.request::<(), _>("GET", "/v1/instances", None)
    }

    pub fn create(&self, req: &CreateInstance) -> Result<Instance, ClientError> {
        self.endpoint.request("POST", "/v1/instances", Some(req))
    }

    pub fn get(&self, n: &str) -> Result<Instance, ClientError> {
        let path = format!("/v1/instances/{}", name(n)?);
        self.endpoint.request::<(), _>("GET", &path, None)
    }

    fn action(&self, n: &str, action: &str) -> Result<Instance, ClientError> {
        let path = format!("/v1/instances/{}/{action}", name(n)?);
        self.endpoint.request::<(), _>("POST", &path, None)
    }

    pub fn start(&self, n: &str) -> Result<Instance, ClientError> {
        self.action(n, "start")
    }

    pub fn stop(&self, n: &str, force: bool) -> Result<Instance, ClientError> {
        let path = format!("/v1/instances/{}/stop", name(n)?);
        self.endpoint
            .request("POST", &path, Some(&StopRequest { force }))
    }

    pub fn restart(&self, n: &str) -> Result<Instance, ClientError> {
        self.action(n, "restart")
    }

    pub fn pause(&self, n: &str) -> Result<Instance, ClientError> {
        self.action(n, "pause")
    }

    pub fn resume(&self, n: &str) -> Result<Instance, ClientError> {
        self.action(n, "resume")
    }

    pub fn delete(&self, n: &str, force: bool) -> Result<(), ClientError> {
        let path = format!("/v1/instances/{}?force={force}", name(n)?);
        self.endpoint.request::<(), ()>("DELETE", &path, None)
    }

    pub fn update(&self, n: &str, upd: &InstanceUpdate) -> Result<Instance, ClientError> {
        let path = format!("/v1/instances/{}", name(n)?);
        self.endpoint.request("PATCH", &path, Some(upd))
    }

    pub fn copy(&self, n: &str, new_name: &str) -> Result<Instance, ClientError> {
        let path = format!("/v1/instances/{}/copy", name(n)?);
        let req = CopyRequest {
            new_name: new_name.to_string(),
        };
        self.endpoint.request("POST", &path, Some(&req))
    }

    /// Runs a command in a running container (give the endpoint a timeout longer than the
    /// command's).
    pub fn exec(&self, n: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        let path = format!("/v1/instances/{}/exec", name(n)?);
        self.endpoint.request("POST", &path, Some(req))
    }

    /// Starts an interactive exec (`req.interactive`, `req.tty`) and returns the connection,
    /// upgraded to [`api::exec_stream`] frames once the command runs.
    pub fn exec_interactive(&self, n: &str, req: &ExecRequest) -> Result<UnixStream, ClientError> {
        let path = format!("/v1/instances/{}/exec", name(n)?);
        let sock = self.endpoint.socket();
        let mut stream = UnixStream::connect(sock).map_err(|source| ClientError::Connect {
            path: sock.to_path_buf(),
            source,
        })?;
        let body = serde_json::to_vec(req).map_err(ClientError::Encode)?;
        kapsel_http::write_request(&mut stream, "POST", &path, &body)?;
        // The head byte by byte, so nothing of the frames after it is read here.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(
                    kapsel_http::HttpError::Malformed("response head too long".into()).into(),
                );
            }
            match stream.read(&mut byte).map_err(kapsel_http::HttpError::Io)? {
                0 => return Err(kapsel_http::HttpError::Truncated.into()),
                _ => head.push(byte[0]),
            }
        }
        if head.starts_with(b"HTTP/1.1 101 ") {
            return Ok(stream);
        }
        let resp = kapsel_http::read_response(&mut std::io::Cursor::new(head).chain(&mut stream))?;
        let message = serde_json::from_slice::<api::ErrorBody>(&resp.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP {}", resp.status));
        Err(ClientError::Status {
            status: resp.status,
            message,
        })
    }

    pub fn snapshots(&self, n: &str) -> Result<Vec<Snapshot>, ClientError> {
        let path = format!("/v1/instances/{}/snapshots", name(n)?);
        self.endpoint.request::<(), _>("GET", &path, None)
    }

    pub fn create_snapshot(&self, n: &str, snap: &str) -> Result<Snapshot, ClientError> {
        let path = format!("/v1/instances/{}/snapshots", name(n)?);
        let req = CreateSnapshot {
            name: snap.to_string(),
        };
        self.endpoint.request("POST", &path, Some(&req))
    }

    pub fn delete_snapshot(&self, n: &str, snap: &str) -> Result<(), ClientError> {
        let path = format!("/v1/instances/{}/snapshots/{}", name(n)?, name(snap)?);
        self.endpoint.request::<(), ()>("DELETE", &path, None)
    }

    pub fn restore_snapshot(&self, n: &str, snap: &str) -> Result<Instance, ClientError> {
        let path = format!(
            "/v1/instances/{}/snapshots/{}/restore",
            name(n)?,
            name(snap)?
        );
        self.endpoint.request::<(), _>("POST", &path, None)
    }

    pub fn images(&self) -> Result<Vec<Image>, ClientError> {
        self.endpoint.request::<(), _>("GET", "/v1/images", None)
    }

    pub fn import_image(&self, req: &ImportImage) -> Result<Image, ClientError> {
        self.endpoint.request("POST", "/v1/images", Some(req))
    }

    pub fn delete_image(&self, n: &str) -> Result<(), ClientError> {
        let path = format!("/v1/images/{}", name(n)?);
        self.endpoint.request::<(), ()>("DELETE", &path, None)
    }

    pub fn networks(&self) -> Result<Vec<Network>, ClientError> {
        self.endpoint.request::<(), _>("GET", "/v1/networks", None)
    }

    pub fn create_network(&self, req: &CreateNetwork) -> Result<Network, ClientError> {
        self.endpoint.request("POST", "/v1/networks", Some(req))
    }

    pub fn delete_network(&self, n: &str) -> Result<(), ClientError> {
        let path = format!("/v1/networks/{}", name(n)?);
        self.endpoint.request::<(), ()>("DELETE", &path, None)
    }

    /// Prometheus text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let resp = self.endpoint.request_raw("GET", "/metrics", b"")?;
        Ok(String::from_utf8_lossy(&resp.body).into_owned())
    }

    /// Calls `each` for every event after `since` and, with `follow`, for new ones until
    /// `each` returns false or the daemon goes away.
    pub fn events(
        &self,
        since: i64,
        follow: bool,
        mut each: impl FnMut(Event) -> bool,
    ) -> Result<(), ClientError> {
        let sock = self.endpoint.socket();
        let mut stream = UnixStream::connect(sock).map_err(|source| ClientError::Connect {
            path: sock.to_path_buf(),
            source,
        })?;
        let path = format!("/v1/events?since={since}&follow={follow}");
        kapsel_http::write_request(&mut stream, "GET", &path, b"")?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .map_err(kapsel_http::HttpError::Io)?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(ClientError::Status {
                status: 500,
                message: format!("event stream refused: {}", status.trim()),
            });
        }
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(kapsel_http::HttpError::Io)?;
            if n == 0 {
                return Ok(());
            }
            if line.trim().is_empty() {
                continue;
            }
            let Ok(ev) = serde_json::from_str::<Event>(line.trim()) else {
                continue; // header lines and keep-alives
            };
            if !each(ev) {
                return Ok(());
            }
        }
    }
}
