//! Request routing and validation: method + path + body → [`ApiRequest`], or a 4xx answer.

use api::vm::{ShutdownRequest, SnapshotRequest};
use kapsel_http::{Request, Response};
use serde::de::DeserializeOwned;

use super::error_response;

/// A validated API operation for the control loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    Info,
    Pause,
    Resume,
    Shutdown { timeout_ms: u64 },
    Reboot,
    Snapshot { path: String },
    Metrics,
}

/// Default grace period of a graceful shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Longest grace period accepted.
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 3_600_000;

fn body<T: DeserializeOwned + Default>(req: &Request) -> Result<T, Response> {
    if req.body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| error_response(400, format!("invalid request body: {e}")))
}

fn required_body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body)
        .map_err(|e| error_response(400, format!("invalid request body: {e}")))
}

/// Every (path, method) the API serves; `docs/api/vm.json` documents exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("/vm", "GET"),
    ("/vm/pause", "PUT"),
    ("/vm/resume", "PUT"),
    ("/vm/shutdown", "PUT"),
    ("/vm/reboot", "PUT"),
    ("/vm/snapshot", "PUT"),
    ("/metrics", "GET"),
];

/// Maps a request to an operation.
pub fn route(req: &Request) -> Result<ApiRequest, Response> {
    let path = req.path.split('?').next().unwrap_or("");
    let Some((_, method)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return Err(error_response(404, format!("no such resource: {path}")));
    };
    if req.method != *method {
        return Err(error_response(
            405,
            format!("{path} accepts {method}, not {}", req.method),
        ));
    }
    Ok(match path {
        "/vm" => ApiRequest::Info,
        "/vm/pause" => ApiRequest::Pause,
        "/vm/resume" => ApiRequest::Resume,
        "/vm/reboot" => ApiRequest::Reboot,
        "/metrics" => ApiRequest::Metrics,
        "/vm/shutdown" => {
            let r: ShutdownRequest = body(req)?;
            let timeout_ms = r.timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS);
            if timeout_ms > MAX_SHUTDOWN_TIMEOUT_MS {
                return Err(error_response(
                    400,
                    format!(
                        "timeout_ms {timeout_ms} is above the maximum {MAX_SHUTDOWN_TIMEOUT_MS}"
                    ),
                ));
            }
            ApiRequest::Shutdown { timeout_ms }
        }
        "/vm/snapshot" => {
            let r: SnapshotRequest = required_body(req)?;
            if r.path.is_empty() {
                return Err(error_response(400, "snapshot path must not be empty"));
            }
            if r.path.as_bytes().contains(&0) {
                return Err(error_response(400, "snapshot path contains a NUL byte"));
            }
            ApiRequest::Snapshot { path: r.path }
        }
        _ => return Err(error_response(404, format!("no such resource: {path}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn known_routes() {
        assert_eq!(route(&req("GET", "/vm", "")), Ok(ApiRequest::Info));
        assert_eq!(route(&req("PUT", "/vm/pause", "")), Ok(ApiRequest::Pause));
        assert_eq!(
            route(&req("PUT", "/vm/shutdown", "")),
            Ok(ApiRequest::Shutdown {
                timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS
            })
        );
        assert_eq!(
            route(&req("PUT", "/vm/shutdown", "{\"timeout_ms\":0}")),
            Ok(ApiRequest::Shutdown { timeout_ms: 0 })
        );
        assert_eq!(
            route(&req("PUT", "/vm/snapshot", "{\"path\":\"/tmp/s\"}")),
            Ok(ApiRequest::Snapshot {
                path: "/tmp/s".into()
            })
        );
    }

    #[test]
    fn bad_requests_get_4xx() {
        let cases = [
            (req("GET", "/nope", ""), 404),
            (req("POST", "/vm/pause", ""), 405),
            (req("PUT", "/vm/snapshot", ""), 400),
            (req("PUT", "/vm/snapshot", "{\"path\":\"\"}"), 400),
            (
                req("PUT", "/vm/snapshot", "{\"path\":\"/x\",\"extra\":1}"),
                400,
            ),
            (req("PUT", "/vm/shutdown", "{\"timeout_ms\":-1}"), 400),
            (
                req("PUT", "/vm/shutdown", "{\"timeout_ms\":99999999999}"),
                400,
            ),
            (req("PUT", "/vm/shutdown", "[1,2"), 400),
        ];
        for (r, status) in cases {
            let resp = route(&r).unwrap_err();
            assert_eq!(resp.status, status, "{r:?}");
            let e: api::ErrorBody = serde_json::from_slice(&resp.body).unwrap();
            assert!(!e.error.is_empty());
        }
    }
}
