//! Maps one HTTP request to a daemon operation and its answer.

use api::daemon::{
    CopyRequest, CreateInstance, CreateNetwork, CreateSnapshot, ExecRequest, HostInfo, ImportImage,
};
use api::daemon::{InstanceStatus, InstanceUpdate, StopRequest};
use kapsel_http::Response;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::container::ops as containers;
use crate::error::{DaemonError, Result};
use crate::state::Daemon;
use crate::{images, metrics, network, ops, snapshots};

/// What a handler produced: a JSON value, an empty answer, text, or an event stream.
#[derive(Debug)]
pub enum Reply {
    Json(u16, Vec<u8>),
    Text(String),
    Empty,
    /// Stream events after this id, following new ones when `follow`.
    Events {
        since: i64,
        follow: bool,
    },
    /// An interactive exec: `101`, then its frames on the connection.
    ExecTty(crate::container::exec_tty::TtyExec),
}

fn json<T: Serialize>(status: u16, v: &T) -> Result<Reply> {
    serde_json::to_vec(v)
        .map(|b| Reply::Json(status, b))
        .map_err(|e| DaemonError::Corrupt(e.to_string()))
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| DaemonError::BadRequest(format!("invalid request body: {e}")))
}

/// `key=value` pairs of a query string.
fn query<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn flag(q: &str, key: &str) -> Result<bool> {
    match query(q, key) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(DaemonError::BadRequest(format!(
            "query parameter {key}={v:?}: expected true or false"
        ))),
    }
}

fn not_allowed(method: &str, path: &str) -> DaemonError {
    DaemonError::MethodNotAllowed(format!("{method} is not allowed on {path}"))
}

/// Dispatches one request.
pub fn route(d: &Daemon, method: &str, target: &str, raw: &[u8]) -> Result<Reply> {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("GET", ["metrics"]) => Ok(Reply::Text(metrics::render(d))),
        ("GET", ["v1", "host"]) => {
            let all = d.db().instances()?;
            let running = all
                .iter()
                .filter(|(i, _)| i.status == InstanceStatus::Running)
                .count();
            json(
                200,
                &HostInfo {
                    version: env!("CARGO_PKG_VERSION").into(),
                    cgroup: d.cgroups.version().into(),
                    instances: all.len(),
                    running,
                },
            )
        }
        ("GET", ["v1", "instances"]) => json(200, &ops::list(d)?),
        ("POST", ["v1", "instances"]) => {
            let req: CreateInstance = body(raw)?;
            json(201, &ops::create(d, &req)?)
        }
        (_, ["v1", "instances"]) => Err(not_allowed(method, path)),
        ("GET", ["v1", "instances", name]) => json(200, &ops::get(d, name)?),
        ("DELETE", ["v1", "instances", name]) => {
            ops::delete(d, name, flag(q, "force")?)?;
            Ok(Reply::Empty)
        }
        ("PATCH", ["v1", "instances", name]) => {
            let upd: InstanceUpdate = body(raw)?;
            json(200, &ops::update(d, name, &upd)?)
        }
        (_, ["v1", "instances", _]) => Err(not_allowed(method, path)),
        ("POST", ["v1", "instances", name, action]) => instance_action(d, name, action, raw),
        ("GET", ["v1", "instances", name, "snapshots"]) => json(200, &snapshots::list(d, name)?),
        ("DELETE", ["v1", "instances", name, "snapshots", snap]) => {
            snapshots::delete(d, name, snap)?;
            Ok(Reply::Empty)
        }
        ("POST", ["v1", "instances", name, "snapshots", snap, "restore"]) => {
            if containers::is_container(d, name)? {
                json(200, &containers::snapshot_restore(d, name, snap)?)
            } else {
                let inst = snapshots::restore(d, name, snap)?;
                json(200, &crate::ops::view(d, inst))
            }
        }
        (_, ["v1", "instances", _, _]) => Err(not_allowed(method, path)),
        ("GET", ["v1", "images"]) => json(200, &d.db().images()?),
        ("POST", ["v1", "images"]) => {
            let req: ImportImage = body(raw)?;
            json(201, &images::import(d, &req)?)
        }
        ("GET", ["v1", "images", name]) => json(200, &d.db().image(name)?),
        ("DELETE", ["v1", "images", name]) => {
            images::delete(d, name)?;
            Ok(Reply::Empty)
        }
        ("GET", ["v1", "networks"]) => json(200, &network::list(d)?),
        ("POST", ["v1", "networks"]) => {
            let req: CreateNetwork = body(raw)?;
            json(201, &network::create(d, &req)?)
        }
        ("DELETE", ["v1", "networks", name]) => {
            network::delete(d, name)?;
            Ok(Reply::Empty)
        }
        ("GET", ["v1", "events"]) => {
            let since = match query(q, "since") {
                None => 0,
                Some(v) => v.parse().map_err(|_| {
                    DaemonError::BadRequest(format!("since={v:?} is not an event id"))
                })?,
            };
            Ok(Reply::Events {
                since,
                follow: flag(q, "follow")?,
            })
        }
        _ => Err(DaemonError::NotFound {
            kind: "route",
            name: format!("{method} {path}"),
        }),
    }
}

fn instance_action(d: &Daemon, name: &str, action: &str, raw: &[u8]) -> Result<Reply> {
    match action {
        "start" => json(200, &ops::start(d, name)?),
        "stop" => {
            let req: StopRequest = body(raw)?;
            json(200, &ops::stop(d, name, req.force)?)
        }
        "restart" => json(200, &ops::restart(d, name)?),
        "copy" => {
            let req: CopyRequest = body(raw)?;
            json(201, &ops::copy(d, name, &req.new_name)?)
        }
        "pause" => json(200, &ops::pause(d, name, true)?),
        "resume" => json(200, &ops::pause(d, name, false)?),
        "snapshots" => {
            let req: CreateSnapshot = body(raw)?;
            if containers::is_container(d, name)? {
                json(201, &containers::snapshot_create(d, name, &req.name)?)
            } else {
                json(201, &snapshots::create(d, name, &req.name)?)
            }
        }
        "exec" => {
            let req: ExecRequest = body(raw)?;
            if req.interactive {
                Ok(Reply::ExecTty(crate::container::exec_tty::start(
                    d, name, &req,
                )?))
            } else {
                json(200, &containers::exec(d, name, &req)?)
            }
        }
        _ => Err(DaemonError::NotFound {
            kind: "action",
            name: action.to_string(),
        }),
    }
}

/// The error answer for `e`.
pub fn error_response(e: &DaemonError) -> Response {
    let body = serde_json::to_vec(&api::ErrorBody { error: e.line() }).unwrap_or_default();
    Response::json(e.status(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(query("force=true&x=1", "x"), Some("1"));
        assert_eq!(query("force", "force"), Some(""));
        assert_eq!(query("", "force"), None);
        assert!(flag("force=maybe", "force").is_err());
        assert!(flag("force=1", "force").unwrap());
    }

    #[test]
    fn empty_body_means_defaults() {
        let r: StopRequest = body(b"").unwrap();
        assert!(!r.force);
        assert!(body::<StopRequest>(b"{\"forse\":true}").is_err());
        assert!(body::<StopRequest>(b"\xff\xfe").is_err());
    }
}
