//! `docs/api/vm.json` and the VMM agree: every routed operation is documented and every
//! documented one is routed, and the responses of a live VMM (no_std test guest on
//! /dev/kvm) validate against the documented schemas for their status codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::Endpoint;
use serde_json::Value;
use test_infra::{require_kvm, test_guest, TestGuestEntry};

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

struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kapsel-openapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sends a request and checks the answer against the document: the status must be documented
/// for the operation and the body must match its schema.
fn check(doc: &Value, ep: &Endpoint, method: &str, path: &str, body: &str) -> u16 {
    let resp = ep.request_raw(method, path, body.as_bytes()).unwrap();
    let op = &doc["paths"][path][method.to_lowercase()];
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
    let d = dir();
    let socket = d.join("api.sock");
    let _vmm = Vmm(Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .arg("run")
        .arg("--kernel")
        .arg(test_guest(TestGuestEntry::Pvh))
        .args(["--cmdline", "test=count", "--memory", "64M"])
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "API socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ep = Endpoint::new(&socket);
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
        ("PUT", "/vm/shutdown", "{\"timeout_ms\":-5}", 400),
        ("PUT", "/vm/shutdown", "{\"timeout_ms\":0}", 200),
    ];
    for (method, path, body, want) in steps {
        let got = check(&doc, &ep, method, path, body);
        assert_eq!(got, *want, "{method} {path} {body}");
    }
}
