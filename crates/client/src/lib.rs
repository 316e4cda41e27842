//! A small blocking client for kapsel's APIs over UNIX sockets: one request per connection.
//! Used by the CLI, the daemon (to drive VMM processes) and the tests.

pub mod daemon;
pub mod vm;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use kapsel_http::Response;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] kapsel_http::HttpError),
    #[error("cannot encode request body")]
    Encode(#[source] serde_json::Error),
    #[error("unexpected response body")]
    Decode(#[source] serde_json::Error),
    /// The server answered with an error status; `message` is its one-line reason.
    #[error("{message}")]
    Status { status: u16, message: String },
}

/// A connection target: the path of a UNIX socket serving a kapsel API.
#[derive(Debug, Clone)]
pub struct Endpoint {
    socket: PathBuf,
    timeout: Duration,
}

impl Endpoint {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Endpoint {
            socket: socket.as_ref().to_path_buf(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Sets the per-request read/write timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the raw response.
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Response, ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let _ = stream.set_read_timeout(Some(self.timeout));
        let _ = stream.set_write_timeout(Some(self.timeout));
        kapsel_http::write_request(&mut stream, method, path, body)?;
        Ok(kapsel_http::read_response(&mut stream)?)
    }

    /// Sends `body` as JSON and decodes a JSON answer; error statuses become
    /// [`ClientError::Status`] with the server's message.
    pub fn request<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(ClientError::Encode)?,
            None => Vec::new(),
        };
        let resp = self.request_raw(method, path, &bytes)?;
        if !(200..300).contains(&resp.status) {
            let message = serde_json::from_slice::<api::ErrorBody>(&resp.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {}", resp.status));
            return Err(ClientError::Status {
                status: resp.status,
                message,
            });
        }
        let body = if resp.body.is_empty() {
            b"null".as_slice()
        } else {
            resp.body.as_slice()
        };
        serde_json::from_slice(body).map_err(ClientError::Decode)
    }
}
