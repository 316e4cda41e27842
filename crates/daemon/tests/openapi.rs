//! The OpenAPI document (`docs/api/daemon.yaml`) and the server agree: every documented
//! operation is routed, every documented schema has exactly the fields the API types
//! serialize, and every routed operation is documented.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use api::daemon::*;
use daemon::routes::route;
use daemon::{Daemon, DaemonConfig, DaemonError};

fn doc() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/daemon.yaml");
    std::fs::read_to_string(p).unwrap()
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// (path, method) pairs under `paths:`.
fn operations(doc: &str) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    let mut in_paths = false;
    let mut path = String::new();
    for l in doc.lines() {
        if indent(l) == 0 && !l.trim().is_empty() {
            in_paths = l.starts_with("paths:");
            continue;
        }
        if !in_paths {
            continue;
        }
        let t = l.trim();
        if indent(l) == 2 && t.starts_with('/') {
            path = t.trim_end_matches(':').to_string();
        } else if indent(l) == 4 {
            let m = t.trim_end_matches(':');
            if ["get", "post", "put", "patch", "delete"].contains(&m) {
                ops.insert((path.clone(), m.to_uppercase()));
            }
        }
    }
    ops
}

/// Property names of each schema under `components: schemas:`.
fn schemas(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let (mut in_schemas, mut current, mut in_props) = (false, String::new(), false);
    for l in doc.lines() {
        let t = l.trim();
        match indent(l) {
            2 => in_schemas = t == "schemas:",
            4 if in_schemas => {
                current = t.trim_end_matches(':').to_string();
                out.entry(current.clone()).or_default();
                in_props = false;
            }
            6 if in_schemas => in_props = t == "properties:",
            8 if in_schemas && in_props => {
                if let Some((k, _)) = t.split_once(':') {
                    out.get_mut(&current).unwrap().insert(k.to_string());
                }
            }
            0 if !t.is_empty() => in_schemas = false,
            _ => {}
        }
    }
    out
}

fn keys<T: serde::Serialize>(v: &T) -> BTreeSet<String> {
    match serde_json::to_value(v).unwrap() {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("not an object: {other}"),
    }
}

fn config() -> InstanceConfig {
    InstanceConfig {
        cpus: 1,
        memory_mib: 64,
        cmdline: String::new(),
        restart: RestartPolicy::No,
        autostart: false,
        cpu_weight: None,
        cpu_cap_percent: None,
        cpuset: None,
        memory_limit_mib: None,
        memory_backing: "prealloc,lock".into(),
        disk_limits: Some(api::vm::IoLimit {
            bytes_per_sec: Some(1),
            ..Default::default()
        }),
        net_limits: Some(api::vm::NetLimits::default()),
        balloon_mib: Some(0),
        networks: Vec::new(),
        command: vec!["sh".into()],
        pids_limit: Some(1),
    }
}

#[test]
fn schemas_match_the_api_types() {
    let s = schemas(&doc());
    let full_update = InstanceUpdate {
        cpus: Some(1),
        memory_mib: Some(1),
        cmdline: Some(String::new()),
        restart: Some(RestartPolicy::No),
        autostart: Some(true),
        cpu_weight: Some(1),
        cpu_cap_percent: Some(1),
        cpuset: Some(String::new()),
        memory_limit_mib: Some(1),
        pids_limit: Some(1),
        memory_backing: Some("lock".into()),
        disk_limits: Some(api::vm::IoLimit {
            bytes_per_sec: Some(1),
            bytes_burst: Some(1),
            ops_per_sec: Some(1),
            ops_burst: None,
        }),
        net_limits: Some(api::vm::NetLimits::default()),
        balloon_mib: Some(0),
    };
    let instance = Instance {
        name: "a".into(),
        image: "i".into(),
        kind: Default::default(),
        status: InstanceStatus::Running,
        config: config(),
        pid: None,
        restarts: 0,
        created_at: 0,
        last_exit: None,
        console: None,
        disk: None,
        address: Some("10.0.0.2/24".into()),
    };
    let create: CreateInstance = serde_json::from_str(
        r#"{"name":"a","image":"i","kind":"container","command":["sh"],"pids_limit":1,"settings":{}}"#,
    )
    .unwrap();
    let image = Image {
        name: "i".into(),
        kind: Default::default(),
        kernel: "/k".into(),
        rootfs: Some("/r".into()),
        initrd: None,
        disk: None,
        cmdline: String::new(),
        size_bytes: 0,
        created_at: 0,
    };
    let import = ImportImage {
        name: "i".into(),
        kernel: "/k".into(),
        rootfs: Some("/r".into()),
        initrd: None,
        disk: None,
        cmdline: None,
    };
    let net = Network {
        name: "n".into(),
        bridge: "b".into(),
        address: "a".into(),
        nat: true,
        active: true,
    };
    let event = Event {
        id: 1,
        time_ms: 0,
        kind: "k".into(),
        instance: None,
        detail: String::new(),
    };
    let host = HostInfo {
        version: "v".into(),
        cgroup: "v1".into(),
        instances: 0,
        running: 0,
    };
    let expected: Vec<(&str, BTreeSet<String>)> = vec![
        ("InstanceConfig", keys(&config())),
        ("Instance", keys(&instance)),
        ("CreateInstance", keys(&create)),
        ("InstanceUpdate", keys(&full_update)),
        ("StopRequest", keys(&StopRequest::default())),
        (
            "CopyRequest",
            keys(&CopyRequest {
                new_name: "b".into(),
            }),
        ),
        ("Image", keys(&image)),
        (
            "Snapshot",
            keys(&Snapshot {
                instance: "a".into(),
                name: "s".into(),
                created_at: 0,
                path: "/p".into(),
                stateful: true,
                disk_layer: Some("/l".into()),
            }),
        ),
        ("CreateSnapshot", keys(&CreateSnapshot { name: "s".into() })),
        ("ImportImage", keys(&import)),
        ("Network", keys(&net)),
        (
            "CreateNetwork",
            keys(&CreateNetwork {
                name: "n".into(),
                address: "a".into(),
                nat: true,
            }),
        ),
        ("Event", keys(&event)),
        (
            "ExecRequest",
            keys(&ExecRequest {
                command: vec!["true".into()],
                tty: true,
                timeout_secs: Some(1),
                interactive: true,
                size: Some(api::daemon::TermSize { rows: 24, cols: 80 }),
            }),
        ),
        (
            "ExecResult",
            keys(&ExecResult {
                exit_code: 0,
                stdout: String::new(),
                stderr: String::new(),
            }),
        ),
        ("HostInfo", keys(&host)),
        (
            "Error",
            keys(&api::ErrorBody {
                error: String::new(),
            }),
        ),
    ];
    for (name, want) in expected {
        let got = s
            .get(name)
            .unwrap_or_else(|| panic!("schema {name} missing"));
        assert_eq!(got, &want, "schema {name}");
    }
}

#[test]
fn every_documented_operation_is_routed_and_every_route_documented() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::new(DaemonConfig {
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        socket: dir.path().join("d.sock"),
        vmm_bin: "/bin/false".into(),
        cgroup_root: "kapsel-openapi-test".into(),
        restart_delay: Duration::from_millis(100),
        stop_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let ops = operations(&doc());
    assert!(ops.len() >= 20, "{ops:?}");
    for (path, method) in &ops {
        let target = path
            .replace("{name}", "nosuch")
            .replace("{snapshot}", "nosnap");
        match route(&d, method, &target, b"{}") {
            Err(DaemonError::NotFound { kind, .. }) => {
                assert!(
                    kind != "route" && kind != "action",
                    "{method} {path} not routed"
                )
            }
            Err(DaemonError::MethodNotAllowed(m)) => panic!("{method} {path}: {m}"),
            _ => {}
        }
    }
    // The routes the server knows, as documented paths.
    let routed = [
        ("/v1/host", "GET"),
        ("/v1/instances", "GET"),
        ("/v1/instances", "POST"),
        ("/v1/instances/{name}", "GET"),
        ("/v1/instances/{name}", "PATCH"),
        ("/v1/instances/{name}", "DELETE"),
        ("/v1/instances/{name}/start", "POST"),
        ("/v1/instances/{name}/stop", "POST"),
        ("/v1/instances/{name}/restart", "POST"),
        ("/v1/instances/{name}/pause", "POST"),
        ("/v1/instances/{name}/resume", "POST"),
        ("/v1/instances/{name}/copy", "POST"),
        ("/v1/instances/{name}/exec", "POST"),
        ("/v1/instances/{name}/snapshots", "GET"),
        ("/v1/instances/{name}/snapshots", "POST"),
        ("/v1/instances/{name}/snapshots/{snapshot}", "DELETE"),
        ("/v1/instances/{name}/snapshots/{snapshot}/restore", "POST"),
        ("/v1/images", "GET"),
        ("/v1/images", "POST"),
        ("/v1/images/{name}", "GET"),
        ("/v1/images/{name}", "DELETE"),
        ("/v1/networks", "GET"),
        ("/v1/networks", "POST"),
        ("/v1/networks/{name}", "DELETE"),
        ("/v1/events", "GET"),
        ("/metrics", "GET"),
    ];
    for (p, m) in routed {
        assert!(
            ops.contains(&(p.to_string(), m.to_string())),
            "{m} {p} is served but not documented"
        );
    }
    assert_eq!(ops.len(), routed.len(), "documented operations: {ops:?}");
}
