//! Request routing and validation: method + path + body → [`ApiRequest`], or a 4xx answer.

use api::vm::{
    BalloonRequest, DiskBackendRequest, IoLimit, NetLimits, ShutdownRequest, SnapshotRequest,
};
use kapsel_http::{Request, Response};
use serde::de::DeserializeOwned;

use super::error_response;

/// A validated API operation for the control loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    Info,
    Pause,
    Resume,
    Shutdown {
        timeout_ms: u64,
    },
    Reboot,
    Snapshot {
        path: String,
    },
    Metrics,
    DiskLimits {
        id: String,
    },
    SetDiskLimits {
        id: String,
        limit: IoLimit,
    },
    DiskBackend {
        id: String,
    },
    SetDiskBackend {
        id: String,
        backend: DiskBackendRequest,
    },
    NetLimits {
        id: String,
    },
    SetNetLimits {
        id: String,
        limits: NetLimits,
    },
    Balloon,
    SetBalloon {
        target_mib: u64,
    },
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

/// Every (path, method) the API serves; `docs/api/vm.json` documents exactly these. A `{id}`
/// segment matches one device id.
pub const ROUTES: &[(&str, &str)] = &[
    ("/vm", "GET"),
    ("/vm/pause", "PUT"),
    ("/vm/resume", "PUT"),
    ("/vm/shutdown", "PUT"),
    ("/vm/reboot", "PUT"),
    ("/vm/snapshot", "PUT"),
    ("/metrics", "GET"),
    ("/vm/disks/{id}/limits", "GET"),
    ("/vm/disks/{id}/limits", "PUT"),
    ("/vm/disks/{id}/backend", "GET"),
    ("/vm/disks/{id}/backend", "PUT"),
    ("/vm/nets/{id}/limits", "GET"),
    ("/vm/nets/{id}/limits", "PUT"),
    ("/vm/balloon", "GET"),
    ("/vm/balloon", "PUT"),
];

/// Longest device id accepted in a path.
const MAX_ID_LEN: usize = 64;

/// Matches `path` against a route template; returns the `{id}` segment (empty when the
/// template has none).
fn matches<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    let mut id = "";
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = seg,
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

fn device_id(id: &str) -> Result<String, Response> {
    let ok = id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(id.to_string())
    } else {
        Err(error_response(
            404,
            "device ids are 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
        ))
    }
}

fn checked_limit(l: IoLimit, what: &str) -> Result<IoLimit, Response> {
    l.check()
        .map(|()| l)
        .map_err(|e| error_response(400, format!("invalid {what}limits: {e}")))
}

/// Maps a request to an operation.
pub fn route(req: &Request) -> Result<ApiRequest, Response> {
    let path = req.path.split('?').next().unwrap_or("");
    let found: Vec<(&str, &str, &str)> = ROUTES
        .iter()
        .filter_map(|(t, m)| matches(t, path).map(|id| (*t, *m, id)))
        .collect();
    if found.is_empty() {
        return Err(error_response(404, format!("no such resource: {path}")));
    }
    let Some(&(template, _, id)) = found.iter().find(|(_, m, _)| *m == req.method) else {
        let methods: Vec<&str> = found.iter().map(|(_, m, _)| *m).collect();
        return Err(error_response(
            405,
            format!(
                "{path} accepts {}, not {}",
                methods.join(" or "),
                req.method
            ),
        ));
    };
    Ok(match (template, req.method.as_str()) {
        ("/vm", _) => ApiRequest::Info,
        ("/vm/pause", _) => ApiRequest::Pause,
        ("/vm/resume", _) => ApiRequest::Resume,
        ("/vm/reboot", _) => ApiRequest::Reboot,
        ("/metrics", _) => ApiRequest::Metrics,
        ("/vm/disks/{id}/limits", "GET") => ApiRequest::DiskLimits { id: device_id(id)? },
        ("/vm/disks/{id}/limits", _) => ApiRequest::SetDiskLimits {
            id: device_id(id)?,
            limit: checked_limit(required_body(req)?, "")?,
        },
        ("/vm/disks/{id}/backend", "GET") => ApiRequest::DiskBackend { id: device_id(id)? },
        ("/vm/disks/{id}/backend", _) => {
            let r: DiskBackendRequest = required_body(req)?;
            if r.path.is_empty() || r.path.as_bytes().contains(&0) {
                return Err(error_response(
                    400,
                    "backend path must be a non-empty path without NUL bytes",
                ));
            }
            if !r.path.starts_with('/') {
                return Err(error_response(
                    400,
                    format!("backend path {:?} must be absolute", r.path),
                ));
            }
            ApiRequest::SetDiskBackend {
                id: device_id(id)?,
                backend: r,
            }
        }
        ("/vm/nets/{id}/limits", "GET") => ApiRequest::NetLimits { id: device_id(id)? },
        ("/vm/nets/{id}/limits", _) => {
            let l: NetLimits = required_body(req)?;
            ApiRequest::SetNetLimits {
                id: device_id(id)?,
                limits: NetLimits {
                    rx: checked_limit(l.rx, "rx ")?,
                    tx: checked_limit(l.tx, "tx ")?,
                },
            }
        }
        ("/vm/balloon", "GET") => ApiRequest::Balloon,
        ("/vm/balloon", _) => {
            let r: BalloonRequest = required_body(req)?;
            ApiRequest::SetBalloon {
                target_mib: r.target_mib,
            }
        }
        ("/vm/shutdown", _) => {
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
        ("/vm/snapshot", _) => {
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
    fn limit_routes_take_the_device_id_from_the_path() {
        assert_eq!(
            route(&req("GET", "/vm/disks/data-1/limits", "")),
            Ok(ApiRequest::DiskLimits {
                id: "data-1".into()
            })
        );
        assert_eq!(
            route(&req(
                "PUT",
                "/vm/disks/disk0/limits",
                "{\"bytes_per_sec\":20971520}"
            )),
            Ok(ApiRequest::SetDiskLimits {
                id: "disk0".into(),
                limit: IoLimit {
                    bytes_per_sec: Some(20 << 20),
                    ..IoLimit::default()
                }
            })
        );
        assert_eq!(
            route(&req("GET", "/vm/nets/net0/limits", "")),
            Ok(ApiRequest::NetLimits { id: "net0".into() })
        );
        let set = route(&req(
            "PUT",
            "/vm/nets/net0/limits",
            "{\"tx\":{\"bytes_per_sec\":1000,\"bytes_burst\":10}}",
        ));
        let Ok(ApiRequest::SetNetLimits { id, limits }) = set else {
            panic!("{set:?}");
        };
        assert_eq!(id, "net0");
        assert!(limits.rx.is_unlimited());
        assert_eq!(limits.tx.bytes_burst, Some(10));
        // an empty object is "no limits"
        assert_eq!(
            route(&req("PUT", "/vm/disks/disk0/limits", "{}")),
            Ok(ApiRequest::SetDiskLimits {
                id: "disk0".into(),
                limit: IoLimit::default()
            })
        );
    }

    #[test]
    fn backend_routes() {
        assert_eq!(
            route(&req("GET", "/vm/disks/disk0/backend", "")),
            Ok(ApiRequest::DiskBackend { id: "disk0".into() })
        );
        assert_eq!(
            route(&req(
                "PUT",
                "/vm/disks/disk0/backend",
                "{\"path\":\"/s/root.qcow2\",\"format\":\"qcow2\"}"
            )),
            Ok(ApiRequest::SetDiskBackend {
                id: "disk0".into(),
                backend: DiskBackendRequest {
                    path: "/s/root.qcow2".into(),
                    format: api::vm::DiskFormat::Qcow2,
                }
            })
        );
        for body in [
            "",
            "{\"path\":\"/a\"}",
            "{\"path\":\"/a\",\"format\":\"vmdk\"}",
            "{\"path\":\"a.qcow2\",\"format\":\"qcow2\"}",
            "{\"path\":\"\",\"format\":\"raw\"}",
            "{\"path\":\"/a\",\"format\":\"raw\",\"x\":1}",
        ] {
            let resp = route(&req("PUT", "/vm/disks/disk0/backend", body)).unwrap_err();
            assert_eq!(resp.status, 400, "{body}");
        }
        let resp = route(&req("POST", "/vm/disks/disk0/backend", "")).unwrap_err();
        assert_eq!(resp.status, 405);
    }

    #[test]
    fn balloon_routes() {
        assert_eq!(
            route(&req("GET", "/vm/balloon", "")),
            Ok(ApiRequest::Balloon)
        );
        assert_eq!(
            route(&req("PUT", "/vm/balloon", "{\"target_mib\":256}")),
            Ok(ApiRequest::SetBalloon { target_mib: 256 })
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
            (req("POST", "/vm/disks/disk0/limits", ""), 405),
            (req("GET", "/vm/disks//limits", ""), 404),
            (req("GET", "/vm/disks/a/b/limits", ""), 404),
            (req("GET", "/vm/disks/d%20x/limits", ""), 404),
            (req("PUT", "/vm/disks/disk0/limits", ""), 400),
            (req("PUT", "/vm/disks/disk0/limits", "{\"bw\":1}"), 400),
            (
                req("PUT", "/vm/disks/disk0/limits", "{\"bytes_per_sec\":0}"),
                400,
            ),
            (
                req("PUT", "/vm/disks/disk0/limits", "{\"bytes_per_sec\":-1}"),
                400,
            ),
            (
                req("PUT", "/vm/disks/disk0/limits", "{\"ops_burst\":5}"),
                400,
            ),
            (
                req(
                    "PUT",
                    "/vm/nets/net0/limits",
                    "{\"rx\":{\"ops_per_sec\":0}}",
                ),
                400,
            ),
            (req("PUT", "/vm/nets/net0/limits", "{\"up\":{}}"), 400),
            (req("POST", "/vm/balloon", ""), 405),
            (req("PUT", "/vm/balloon", ""), 400),
            (req("PUT", "/vm/balloon", "{\"target_mib\":-1}"), 400),
            (req("PUT", "/vm/balloon", "{\"target\":1}"), 400),
        ];
        for (r, status) in cases {
            let resp = route(&r).unwrap_err();
            assert_eq!(resp.status, status, "{r:?}");
            let e: api::ErrorBody = serde_json::from_slice(&resp.body).unwrap();
            assert!(!e.error.is_empty());
        }
    }
}
