//! A real Linux guest on a qcow2 overlay, inside the nested test bed (see `testbed_linux.rs`
//! for the harness).
//!
//! In L1, `kapsel disk create` makes `root.qcow2` (4 KiB clusters, so the overlay stays
//! small for the trip back) over the shared busybox ext4 rootfs (`root.ext4`, raw). The guest boots with `root=/dev/vda` from the overlay, writes a file
//! and syncs, then reboots. L1 sends the overlay back (gzip + base64) with checksums of the
//! base before and after; the host then checks, with QEMU's own tools, that the base is
//! unchanged, `qemu-img check` is clean, the backing chain is right, and the file is in the
//! overlay (`qemu-img convert` + `debugfs`). A disk given without `format=` that starts with
//! a qcow2 header is refused with one line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_infra::scenario::sh_quote;
use test_infra::{TestBed, TestBedRun};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw quiet guest.exit=shell";
const TEXT: &str = "kapsel-qcow2-4242";

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kapsel-qcow2-tb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn scenario() -> String {
    let commands =
        format!("echo {TEXT} > /qcow2-file; sync; echo QC-SYNC-RC=$?; cat /qcow2-file; exit");
    format!(
        r#"
kapsel disk create root.qcow2 --backing root.ext4 --backing-format raw --cluster-size 4096
echo "DISK-CREATE-RC=$?"
echo "BASE-MD5-BEFORE=$(md5sum root.ext4 | cut -d' ' -f1)"
vm_shell qcow2-root 300 {commands} --kernel bzImage --cmdline {cmdline} --memory 256M --disk path=root.qcow2,format=qcow2
echo "BASE-MD5-AFTER=$(md5sum root.ext4 | cut -d' ' -f1)"
echo "OVERLAY-BEGIN"; gzip -c root.qcow2 | base64; echo "OVERLAY-END"
vm qcow2-unstated 60 --kernel bzImage --cmdline {cmdline} --memory 256M --disk path=root.qcow2
"#,
        commands = sh_quote(&commands),
        cmdline = sh_quote(CMDLINE),
    )
}

/// The value after `key` on the first line that has one (skipping echoed `$…` forms).
fn line_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.find(key).map(|p| &l[p + key.len()..]))
        .find(|v| !v.starts_with('$'))
        .map(str::trim)
}

/// Decodes the overlay sent back between the markers into `dir/root.qcow2`.
fn returned_overlay(run: &TestBedRun, dir: &Path) -> PathBuf {
    let out = &run.output;
    let begin = out.find("OVERLAY-BEGIN").expect("no OVERLAY-BEGIN");
    let end = out.find("OVERLAY-END").expect("no OVERLAY-END");
    let b64: String = out[begin + "OVERLAY-BEGIN".len()..end]
        .lines()
        // L1's own kernel messages share the console; base64 never holds '['.
        .filter(|l| !l.trim_start().starts_with('['))
        .flat_map(str::chars)
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    let gz = dir.join("root.qcow2.gz");
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&gz).unwrap())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b64.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "base64 -d failed");
    let gunzip = Command::new("gzip")
        .args(["-d", "-c"])
        .arg(&gz)
        .output()
        .unwrap();
    assert!(gunzip.status.success(), "gunzip: {gunzip:?}");
    let img = dir.join("root.qcow2");
    std::fs::write(&img, gunzip.stdout).unwrap();
    img
}

fn tool(dir: &Path, name: &str, args: &[&str]) -> String {
    let o = Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (scripts/setup-host.sh installs it)"));
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{name} {args:?}: {text}");
    text
}

#[test]
fn testbed_qcow2_overlay_root_disk() {
    let dir = scratch_dir();
    let base = test_infra::guest_dir().join("rootfs-busybox.ext4");
    let run = TestBed::new("qcow2")
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .guest_file("rootfs-busybox.ext4", "root.ext4")
        .scenario_with_prelude(&scenario())
        .timeout(Duration::from_secs(900))
        .run();
    println!(
        "qcow2: {} (attempts {})",
        run.result_line().unwrap_or("no NESTED-RESULT"),
        run.attempts
    );
    let boot = run.boot("qcow2-root");
    let c = &boot.console;
    println!("  qcow2-root: rc={:?} {:?}s in L1", boot.rc, boot.seconds);
    assert_eq!(
        line_value(&run.output, "DISK-CREATE-RC="),
        Some("0"),
        "{}",
        run.tail(40)
    );
    assert!(
        run.output.contains("KTEST-SHELL qcow2-root up=1"),
        "shell never came up:\n{c}"
    );
    assert_eq!(boot.rc, Some(0), "qcow2-root console:\n{c}");
    assert!(
        boot.report()
            .get("root")
            .is_some_and(|r| r.contains("/dev/root ext4") || r.contains("ext4")),
        "root is not the ext4 overlay:\n{c}"
    );
    assert_eq!(line_value(c, "QC-SYNC-RC="), Some("0"), "{c}");

    // The base is unchanged: in L1 before and after, and equal to the host's artifact.
    let host_md5 = tool(Path::new("/"), "md5sum", &[base.to_str().unwrap()]);
    let host_md5 = host_md5.split_whitespace().next().unwrap();
    assert_eq!(line_value(&run.output, "BASE-MD5-BEFORE="), Some(host_md5));
    assert_eq!(line_value(&run.output, "BASE-MD5-AFTER="), Some(host_md5));

    // The overlay, next to the host's copy of its base under the name it records.
    let overlay = returned_overlay(&run, &dir);
    std::os::unix::fs::symlink(&base, dir.join("root.ext4")).unwrap();
    let check = tool(&dir, "qemu-img", &["check", "root.qcow2"]);
    assert!(check.contains("No errors were found"), "{check}");
    assert!(!check.contains("leaked"), "{check}");
    let info = tool(&dir, "qemu-img", &["info", "--backing-chain", "root.qcow2"]);
    assert!(info.contains("backing file: root.ext4"), "{info}");
    assert!(info.contains("backing file format: raw"), "{info}");
    assert_eq!(info.matches("image: ").count(), 2, "{info}");
    tool(
        &dir,
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "root.qcow2",
            "flat.raw",
        ],
    );
    let cat = tool(&dir, "debugfs", &["-R", "cat /qcow2-file", "flat.raw"]);
    assert!(cat.contains(TEXT), "debugfs cat /qcow2-file: {cat}");
    assert!(
        std::fs::metadata(&overlay).unwrap().len() < std::fs::metadata(&base).unwrap().len() / 2,
        "the overlay holds only what changed"
    );

    // No format= on a qcow2 file: one line, exit 1.
    let unstated = run.boot("qcow2-unstated");
    assert_eq!(unstated.rc, Some(1), "{}", unstated.console);
    let lines: Vec<&str> = unstated
        .console
        .lines()
        .map(str::trim)
        // L1's own kernel messages share the console.
        .filter(|l| !l.is_empty() && !l.starts_with('['))
        .collect();
    assert_eq!(lines.len(), 1, "{}", unstated.console);
    assert!(lines[0].contains("format=qcow2"), "{}", unstated.console);
    std::fs::remove_dir_all(&dir).unwrap();
}
