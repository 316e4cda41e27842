//! Daemon snapshots of a real Linux guest capture its disk, in the nested test bed: L1 runs
//! `kapsel daemon`, the busybox ext4 rootfs is the image's disk and the guest's root
//! (`root=/dev/vda`, the instance's qcow2 overlay over it). Through `kapsel console` the
//! guest sets a shell variable, writes file A and syncs; `kapsel snapshot create`; it sets
//! another variable, writes B and syncs; `kapsel snapshot restore` brings back the guest,
//! resumed (not rebooted: the first variable is there, the second is not) with A and
//! without B. It writes C, and a second restore of the same snapshot drops C again. After
//! the root is remounted read-only and the VM stopped, `qemu-img check` finds every image
//! of the chain (image ← snapshot layer ← root.qcow2) clean and `e2fsck -fn` the flattened
//! disk: memory and disk were captured together. Deleting the snapshot then folds its layer
//! into the stopped VM's disk (image ← root.qcow2), clean and identical to the flattened
//! chain (`qemu-img compare`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon_console.rs"]
mod daemon_console;

use std::time::Duration;

use daemon_console::{step_out, step_rc, transcripts, HELPERS};
use test_infra::scenario::{field, sh_quote};
use test_infra::TestBed;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw quiet guest.exit=shell";
const ROOT: &str = "/var/lib/kapsel/instances/g/root.qcow2";

fn assert_step(out: &str, tag: &str) {
    assert_eq!(
        step_rc(out, tag),
        Some(0),
        "{tag} failed:\n{}\ndaemon log:\n{}",
        step_out(out, tag).join("\n"),
        step_out(out, "daemon-log").join("\n")
    );
}

fn scenario() -> String {
    let write_a = "T=tok-$$-$RANDOM; echo TOKEN-SET=$T; echo AAA-4242 > /file-a; sync; \
                   echo SYNC-A=$?; echo END-A-$((6*7))";
    let write_b = "U=after-snapshot; echo BBB-4242 > /file-b; sync; echo SYNC-B=$?; \
                   ls /; echo END-B-$((6*7))";
    let check = |n: &str, write: &str| {
        format!(
            "echo TOKEN-{n}=$T U-{n}=[$U]; echo A-{n}=$(cat /file-a); \
             if [ -e /file-b ]; then echo B-{n}=yes; else echo B-{n}=no; fi; \
             if [ -e /file-c ]; then echo C-{n}=yes; else echo C-{n}=no; fi; {write} \
             echo END-{n}-$((6*7))"
        )
    };
    let after1 = check("R1", "echo CCC-4242 > /file-c; sync; echo SYNC-C=$?;");
    let after2 = check(
        "R2",
        "sync; mount -o remount,ro / || echo u > /proc/sysrq-trigger; sleep 1; \
         echo ROOT-MOUNT=$(grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1);",
    );
    format!(
        r#"{HELPERS}
export KAPSEL_SOCKET=/run/kapsel/kapsel.sock
mkdir -p /run/kapsel
kapsel daemon --state-dir /var/lib/kapsel --run-dir /run/kapsel >/tmp/daemon.log 2>&1 &
i=0; while [ ! -S $KAPSEL_SOCKET ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
step import kapsel image import linux --kernel bzImage --disk root.ext4 --cmdline {cmdline}
step launch kapsel launch linux g --memory 256M
console g 300 END-A-42 {write_a}
step snapshot kapsel snapshot create g s1
step snapshot-list kapsel snapshot list g
step layers ls /var/lib/kapsel/layers
console g 120 END-B-42 {write_b}
step restore-1 kapsel snapshot restore g s1
console g 120 END-R1-42 {after1}
step restore-2 kapsel snapshot restore g s1
console g 120 END-R2-42 {after2}
step info kapsel info g
step stop kapsel stop g --force
step chain qemu-img info --backing-chain {root}
step check-root qemu-img check {root}
for l in /var/lib/kapsel/layers/*.qcow2; do step check-layer qemu-img check "$l"; done
step convert qemu-img convert -f qcow2 -O raw {root} /tmp/flat.raw
step fsck e2fsck -fn /tmp/flat.raw
step delete-snapshot kapsel snapshot delete g s1
step chain-folded qemu-img info --backing-chain {root}
step check-folded qemu-img check {root}
step compare-folded qemu-img compare -f qcow2 -F raw {root} /tmp/flat.raw
step delete kapsel delete g
step layers-after ls -A /var/lib/kapsel/layers
step daemon-log cat /tmp/daemon.log
"#,
        cmdline = sh_quote(CMDLINE),
        write_a = sh_quote(write_a),
        write_b = sh_quote(write_b),
        after1 = sh_quote(&after1),
        after2 = sh_quote(&after2),
        root = ROOT,
    )
}

#[test]
fn testbed_daemon_snapshot_restores_memory_and_disk_together() {
    let run = TestBed::new("daemon-snapshot")
        .with_kapsel()
        .binary("/usr/bin/qemu-img")
        .binary("/usr/sbin/e2fsck")
        .guest_file("bzImage", "bzImage")
        .guest_file("rootfs-busybox.ext4", "root.ext4")
        .memory("3G")
        .timeout(Duration::from_secs(900))
        .scenario(&scenario())
        .run();
    let out = run.output.replace('\r', "");
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    for l in out.lines().filter(|l| l.starts_with("DTEST ")) {
        println!("  {l}");
    }
    for tag in ["import", "launch", "snapshot"] {
        assert_step(&out, tag);
    }
    let t = transcripts(&out, "g");
    assert_eq!(t.len(), 4, "four console sessions expected:\n{out}");
    let sessions: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("DTEST console-g "))
        .collect();
    for s in &sessions {
        assert!(
            s.contains("rc=0 up=1 detached=1"),
            "{s}:\n{}",
            t.join("\n----\n")
        );
    }
    let token = field(t[0], "TOKEN-SET=")
        .filter(|v| v.starts_with("tok-"))
        .unwrap_or_else(|| panic!("no token set:\n{}", t[0]));
    assert_eq!(field(t[0], "SYNC-A="), Some("0"), "{}", t[0]);
    assert_eq!(field(t[1], "SYNC-B="), Some("0"), "{}", t[1]);

    // The snapshot holds memory and a disk layer.
    let listed = step_out(&out, "snapshot-list").join("\n");
    assert!(listed.contains("\"stateful\": true"), "{listed}");
    assert!(listed.contains("/var/lib/kapsel/layers/"), "{listed}");
    assert_eq!(step_out(&out, "layers").len(), 1, "one layer: {out}");

    // Each restore: resumed (the shell's variable from before the snapshot, not the one
    // after), file A there, B (and C) gone.
    for (i, n) in ["R1", "R2"].iter().enumerate() {
        assert_step(&out, &format!("restore-{}", i + 1));
        let s = t[2 + i];
        assert_eq!(
            field(s, &format!("TOKEN-{n}=")),
            Some(token),
            "not resumed:\n{s}"
        );
        assert_eq!(field(s, &format!("U-{n}=")), Some("[]"), "{s}");
        assert_eq!(field(s, &format!("A-{n}=")), Some("AAA-4242"), "{s}");
        assert_eq!(field(s, &format!("B-{n}=")), Some("no"), "{s}");
        assert_eq!(field(s, &format!("C-{n}=")), Some("no"), "{s}");
    }
    assert_eq!(field(t[2], "SYNC-C="), Some("0"), "{}", t[2]);
    assert_eq!(field(t[3], "ROOT-MOUNT="), Some("ro"), "{}", t[3]);
    let info = step_out(&out, "info").join("\n");
    assert!(info.contains("running"), "{info}");

    // The chain: image ← layer ← root.qcow2, every image clean, the filesystem clean.
    for tag in ["stop", "chain", "check-root", "convert", "fsck"] {
        assert_step(&out, tag);
    }
    let chain = step_out(&out, "chain").join("\n");
    assert_eq!(chain.matches("image: ").count(), 3, "{chain}");
    assert!(
        chain.contains("backing file: /var/lib/kapsel/layers/g-"),
        "{chain}"
    );
    assert!(
        chain.contains("backing file: /var/lib/kapsel/images/linux/disk.raw"),
        "{chain}"
    );
    // qemu-img check exits 0 only without errors and leaks (2 corruption, 3 leaks).
    let layer_checks: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("DTEST check-layer rc="))
        .collect();
    assert_eq!(layer_checks, ["DTEST check-layer rc=0"], "{out}");
    let checked = step_out(&out, "check-root")
        .into_iter()
        .chain(step_out(&out, "check-layer"))
        .filter(|l| l.contains("No errors were found"))
        .count();
    assert_eq!(checked, 2, "{out}");
    let fsck = step_out(&out, "fsck").join("\n");
    assert!(!fsck.contains("UNEXPECTED"), "{fsck}");

    // Deleting the snapshot folds its layer into the stopped VM's disk: image ← root.qcow2,
    // clean, reading exactly as the flattened chain did.
    for tag in [
        "delete-snapshot",
        "chain-folded",
        "check-folded",
        "compare-folded",
    ] {
        assert_step(&out, tag);
    }
    let folded = step_out(&out, "chain-folded").join("\n");
    assert_eq!(folded.matches("image: ").count(), 2, "{folded}");
    assert!(!folded.contains("/var/lib/kapsel/layers/"), "{folded}");
    let compared = step_out(&out, "compare-folded").join("\n");
    assert!(compared.contains("Images are identical"), "{compared}");

    // Deleting the instance leaves no layer.
    for tag in ["delete", "layers-after"] {
        assert_step(&out, tag);
    }
    assert!(
        step_out(&out, "layers-after")
            .iter()
            .all(|l| l.trim().is_empty()),
        "layers left: {:?}",
        step_out(&out, "layers-after")
    );
}
