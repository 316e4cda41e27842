//! `kapsel disk create|info`: images qemu-img accepts, one-line errors, distinct exit codes.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kapsel(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kapsel-disk-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn qemu_img(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img: {e} (scripts/setup-host.sh installs qemu-utils)"));
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert!(o.status.success(), "qemu-img {args:?}: {text}");
    text
}

#[test]
fn disk_create_and_info() {
    let d = tmpdir();
    let o = kapsel(
        &d,
        &[
            "disk", "create", "base.raw", "--format", "raw", "--size", "64M",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(d.join("base.raw")).unwrap().len(),
        64 << 20
    );
    let o = kapsel(
        &d,
        &[
            "disk",
            "create",
            "top.qcow2",
            "--backing",
            "base.raw",
            "--backing-format",
            "raw",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(qemu_img(&d, &["check", "top.qcow2"]).contains("No errors were found"));
    let info = qemu_img(&d, &["info", "top.qcow2"]);
    assert!(info.contains("backing file: base.raw"), "{info}");
    assert!(info.contains("backing file format: raw"), "{info}");
    assert!(info.contains("virtual size: 64 MiB"), "{info}");

    let o = kapsel(&d, &["disk", "info", "--json", "top.qcow2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let chain: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(chain[0]["format"], "qcow2");
    assert_eq!(chain[0]["virtual_size"], 64 << 20);
    assert_eq!(chain[0]["backing_file"], "base.raw");
    assert_eq!(chain[1]["format"], "raw");
    let o = kapsel(&d, &["disk", "info", "top.qcow2"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("backing file: base.raw (raw)"));

    // Errors: one line each, nothing overwritten.
    for (args, code, text) in [
        (
            &["disk", "create", "top.qcow2", "--size", "1G"][..],
            1,
            "already exists",
        ),
        (&["disk", "create", "x.qcow2"][..], 1, "a size is needed"),
        (
            &["disk", "create", "x.qcow2", "--size", "1X"][..],
            2,
            "invalid size",
        ),
        (
            &["disk", "create", "x.qcow2", "--backing", "base.raw"][..],
            2,
            "--backing-format",
        ),
        (
            &[
                "disk",
                "create",
                "x.qcow2",
                "--backing",
                "no.raw",
                "--backing-format",
                "raw",
            ][..],
            1,
            "no.raw",
        ),
        (
            &[
                "disk", "create", "x.vmdk", "--format", "vmdk", "--size", "1M",
            ][..],
            2,
            "vmdk",
        ),
        (&["disk", "info", "missing.qcow2"][..], 1, "missing.qcow2"),
    ] {
        let o = kapsel(&d, args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
        assert!(e.contains(text), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
    }
    assert!(!d.join("x.qcow2").exists());
    assert!(qemu_img(&d, &["info", "top.qcow2"]).contains("virtual size: 64 MiB"));
    std::fs::remove_dir_all(d).unwrap();
}
