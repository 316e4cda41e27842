//! `docs/api/vm.json` and the VMM agree: every routed operation is documented and every
//! documented one is routed, and the responses of a live VMM (no_std test guest on
//! /dev/kvm) validate against the documented schemas for their status codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/vmm_process.rs"]
mod vmm_process;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use client::Endpoint;
use serde_json::Value;
use test_infra::{require_kvm, test_guest, TestGuestEntry};
use vmm_process::Vmm;

fn doc() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/vm.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut node = doc;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            resolve(doc, node)
        }
        None => v,
    }
}

/// Checks `value` against the subset of JSON Schema the document uses; returns the errors.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let ok = match ty {
        "object" => value.is_object(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{at}: expected {ty}, got {value}"));
        return;
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if n < min {
            errors.push(format!("{at}: {n} < minimum {min}"));
        }
    }
    if ty == "object" {
        let obj = value.as_object().unwrap();
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = req.as_str().unwrap();
            if !obj.contains_key(key) {
                errors.push(format!("{at}: missing required {key}"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, v, &format!("{at}.{k}"), errors),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{at}: undocumented field {k}"))
                }
                None => {}
            }
        }
    }
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (path.clone(), m.to_uppercase()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = vmm::api::routes::ROUTES
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(documented, routed);
}

fn dir(name: &str) -> PathBuf {
    vmm_process::dir("openapi", name)
}

/// Starts a VMM running the counting test guest with its API socket in `d`.
fn start_vmm(d: &Path, extra: &[String]) -> (Vmm, Endpoint) {
    let socket = d.join("api.sock");
    let mut run = Command::new(env!("CARGO_BIN_EXE_kapsel"));
    run.arg("run")
        .arg("--kernel")
        .arg(test_guest(TestGuestEntry::Pvh))
        .args(["--cmdline", "test=count", "--memory", "64M"])
        .args(extra);
    let (vmm, _) = vmm_process::spawn(run, &socket);
    (vmm, Endpoint::new(&socket))
}

/// The documented path `path` falls under (`/vm/disks/disk0/limits` → `/vm/disks/{id}/limits`).
fn template<'a>(doc: &'a Value, path: &str) -> &'a str {
    let want: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|t| {
            let segs: Vec<&str> = t.split('/').collect();
            segs.len() == want.len()
                && segs
                    .iter()
                    .zip(&want)
                    .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
        })
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{path} is not documented"))
}

/// [`check`]s each `(method, path, body, status)` in order and that the status is the one
/// expected.
fn check_steps(doc: &Value, ep: &Endpoint, steps: &[(&str, &str, &str, u16)]) {
    for (method, path, body, want) in steps {
        let got = check(doc, ep, method, path, body);
        assert_eq!(got, *want, "{method} {path} {body}");
    }
}

/// Sends a request and checks the answer against the document: the status must be documented
/// for the operation and the body must match its schema.
fn check(doc: &Value, ep: &Endpoint, method: &str, path: &str, body: &str) -> u16 {
    let resp = ep.request_raw(method, path, body.as_bytes()).unwrap();
    let op = &doc["paths"][template(doc, path)][method.to_lowercase()];
    let documented = resolve(doc, &op["responses"][resp.status.to_string()]);
    assert!(
        documented.is_object(),
        "{method} {path} answered {} which is not documented: {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    if let Some(schema) = documented["content"]["application/json"].get("schema") {
        let value: Value = serde_json::from_slice(&resp.body).unwrap();
        let mut errors = Vec::new();
        validate(doc, schema, &value, "body", &mut errors);
        assert!(errors.is_empty(), "{method} {path}: {errors:?}\n{value}");
    }
    resp.status
}

#[test]
fn live_responses_match_the_document() {
    require_kvm();
    let doc = doc();
    let d = dir("lifecycle");
    let (_vmm, ep) = start_vmm(&d, &[]);
    let snap = d.join("snap");
    let snap_body = format!("{{\"path\":\"{}\"}}", snap.display());
    let steps: &[(&str, &str, &str, u16)] = &[
        ("GET", "/vm", "", 200),
        ("PUT", "/vm/resume", "", 409),
        ("PUT", "/vm/snapshot", &snap_body, 409),
        ("PUT", "/vm/pause", "", 200),
        ("PUT", "/vm/pause", "", 409),
        ("PUT", "/vm/snapshot", "{\"path\":\"\"}", 400),
        ("PUT", "/vm/snapshot", "{\"path\":\"/x\",\"bogus\":1}", 400),
        ("PUT", "/vm/snapshot", &snap_body, 200),
        ("PUT", "/vm/snapshot", &snap_body, 409),
        ("PUT", "/vm/reboot", "", 409),
        ("PUT", "/vm/resume", "", 200),
        ("GET", "/metrics", "", 200),
        ("GET", "/vm/disks/disk0/limits", "", 404),
        ("GET", "/vm/nets/net0/limits", "", 404),
        ("GET", "/vm/balloon", "", 404),
        ("PUT", "/vm/balloon", "{\"target_mib\":1}", 404),
        ("PUT", "/vm/shutdown", "{\"timeout_ms\":-5}", 400),
        ("PUT", "/vm/shutdown", "{\"timeout_ms\":0}", 200),
    ];
    check_steps(&doc, &ep, steps);
}

/// The run-time I/O limit routes on a VM with a limited disk: read back, changed, bad bodies
/// and unknown ids answered as documented.
#[test]
fn live_limit_responses_match_the_document() {
    require_kvm();
    let doc = doc();
    let d = dir("limits");
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("path={},id=data,bw=10M", disk.display());
    let (_vmm, ep) = start_vmm(&d, &["--disk".into(), disk_arg]);
    let vm = client::vm::VmClient::new(ep.clone());
    let configured = vm.disk_limits("data").unwrap();
    assert_eq!(configured.bytes_per_sec, Some(10 << 20), "{configured:?}");
    let faster = api::vm::IoLimit {
        bytes_per_sec: Some(20 << 20),
        ops_per_sec: Some(1000),
        ops_burst: Some(10),
        ..Default::default()
    };
    let now = vm.set_disk_limits("data", &faster).unwrap();
    assert_eq!(now.bytes_burst, Some(2 << 20), "default burst: {now:?}");
    assert_eq!(vm.disk_limits("data").unwrap(), now);
    let steps: &[(&str, &str, &str, u16)] = &[
        ("GET", "/vm/disks/data/limits", "", 200),
        ("GET", "/vm/disks/disk0/limits", "", 404),
        (
            "PUT",
            "/vm/disks/data/limits",
            "{\"bytes_per_sec\":20971520}",
            200,
        ),
        ("PUT", "/vm/disks/data/limits", "{\"bytes_per_sec\":0}", 400),
        ("PUT", "/vm/disks/data/limits", "{\"iops\":5}", 400),
        ("PUT", "/vm/disks/data/limits", "", 400),
        ("PUT", "/vm/disks/nope/limits", "{}", 404),
        ("PUT", "/vm/disks/data/limits", "{}", 200),
        ("GET", "/vm/nets/net0/limits", "", 404),
        ("PUT", "/vm/nets/net0/limits", "{\"rx\":{}}", 404),
        (
            "PUT",
            "/vm/nets/net0/limits",
            "{\"rx\":{\"ops_per_sec\":0}}",
            400,
        ),
    ];
    check_steps(&doc, &ep, steps);
    assert!(vm.disk_limits("data").unwrap().is_unlimited());
}

/// The balloon routes on a VM with a balloon (the test guest has no balloon driver, so the
/// target is set but never reached): read back, changed, bad bodies answered as documented.
#[test]
fn live_balloon_responses_match_the_document() {
    require_kvm();
    let doc = doc();
    let d = dir("balloon");
    let (_vmm, ep) = start_vmm(
        &d,
        &[
            "--balloon".into(),
            "deflate_on_oom=on,stats_period=1,free_page_reporting=on".into(),
        ],
    );
    let vm = client::vm::VmClient::new(ep.clone());
    let b = vm.balloon().unwrap();
    assert_eq!((b.target_mib, b.actual_mib), (0, 0), "{b:?}");
    assert!(b.deflate_on_oom && b.free_page_reporting, "{b:?}");
    assert_eq!(b.stats_period_secs, Some(1));
    assert_eq!(vm.set_balloon(32).unwrap().target_mib, 32);
    let steps: &[(&str, &str, &str, u16)] = &[
        ("GET", "/vm/balloon", "", 200),
        ("PUT", "/vm/balloon", "{\"target_mib\":16}", 200),
        ("PUT", "/vm/balloon", "{\"target_mib\":65}", 400),
        ("PUT", "/vm/balloon", "{\"target_mib\":-1}", 400),
        ("PUT", "/vm/balloon", "{\"size\":1}", 400),
        ("PUT", "/vm/balloon", "", 400),
        ("PUT", "/vm/balloon", "{\"target_mib\":0}", 200),
    ];
    check_steps(&doc, &ep, steps);
    assert_eq!(vm.balloon().unwrap().target_mib, 0);
    let metrics = vm.metrics().unwrap();
    assert!(
        metrics.contains("kapsel_vm_balloon_target_bytes 0\n"),
        "{metrics}"
    );
}

/// The disk image switch on a VM with a qcow2 disk: refused while running, for unknown
/// disks, unopenable files and images that do not build on the open one; done when paused.
#[test]
fn live_backend_responses_match_the_document() {
    require_kvm();
    let doc = doc();
    let d = dir("backend");
    let base = d.join("base.qcow2");
    let create = |path: &Path, opts: disk::CreateOptions| disk::create(path, &opts).unwrap();
    create(
        &base,
        disk::CreateOptions {
            size: Some(1 << 20),
            ..Default::default()
        },
    );
    let disk_arg = format!("path={},format=qcow2", base.display());
    let (_vmm, ep) = start_vmm(&d, &["--disk".into(), disk_arg]);
    let over = |name: &str, backing: &Path, size: Option<u64>| {
        let p = d.join(name);
        create(
            &p,
            disk::CreateOptions {
                size,
                backing: Some((backing.display().to_string(), disk::Format::Qcow2)),
                ..Default::default()
            },
        );
        format!("{{\"path\":\"{}\",\"format\":\"qcow2\"}}", p.display())
    };
    let good = over("top.qcow2", &base, None);
    let bigger = over("big.qcow2", &base, Some(2 << 20));
    let stranger = d.join("stranger.qcow2");
    create(
        &stranger,
        disk::CreateOptions {
            size: Some(1 << 20),
            ..Default::default()
        },
    );
    let unrelated = over("unrelated.qcow2", &stranger, None);
    let missing = format!(
        "{{\"path\":\"{}\",\"format\":\"qcow2\"}}",
        d.join("missing").display()
    );
    let steps: &[(&str, &str, &str, u16)] = &[
        ("GET", "/vm/disks/disk0/backend", "", 200),
        ("GET", "/vm/disks/disk1/backend", "", 404),
        ("PUT", "/vm/disks/disk0/backend", &good, 409),
        ("PUT", "/vm/pause", "", 200),
        ("PUT", "/vm/disks/disk1/backend", &good, 404),
        ("PUT", "/vm/disks/disk0/backend", &missing, 400),
        ("PUT", "/vm/disks/disk0/backend", &unrelated, 400),
        ("PUT", "/vm/disks/disk0/backend", &bigger, 400),
        ("PUT", "/vm/disks/disk0/backend", "{\"path\":\"/x\"}", 400),
        (
            "PUT",
            "/vm/disks/disk0/backend",
            "{\"path\":\"x\",\"format\":\"raw\"}",
            400,
        ),
        ("PUT", "/vm/disks/disk0/backend", &good, 200),
        ("GET", "/vm/disks/disk0/backend", "", 200),
        ("PUT", "/vm/resume", "", 200),
    ];
    check_steps(&doc, &ep, steps);
    let now = client::vm::VmClient::new(ep).disk_backend("disk0").unwrap();
    assert_eq!(now.path, d.join("top.qcow2").display().to_string());
    assert_eq!(now.size_bytes, 1 << 20);
}
