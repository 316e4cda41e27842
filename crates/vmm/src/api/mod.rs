//! The per-VM control API: a REST/JSON server on a UNIX socket (`--api-socket`).
//!
//! The server thread parses and validates requests ([`routes`]) and hands each one to the
//! control loop as an [`ApiRequest`] with a reply channel; all VM changes happen on the
//! control loop's thread, so operations never race each other.

pub mod routes;
mod server;

pub use routes::ApiRequest;
pub use server::{spawn_api_server, ApiServer};

use kapsel_http::Response;

/// A JSON error response with one line of text.
pub fn error_response(status: u16, message: impl Into<String>) -> Response {
    let body = serde_json::to_vec(&api::ErrorBody {
        error: message.into(),
    })
    .unwrap_or_default();
    Response::json(status, body)
}

/// A JSON success response.
pub fn json_response<T: serde::Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::json(status, body),
        Err(e) => error_response(500, format!("cannot encode response: {e}")),
    }
}
