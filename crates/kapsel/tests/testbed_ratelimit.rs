//! The I/O rate limiter end to end: a disk limited to 10 MiB/s (`--disk …,bw=10M`) takes
//! 5 s ± 10 % for 50 MiB of direct writes and for 50 MiB of direct reads in the guest
//! (`dd … oflag=direct` / `iflag=direct`), while an unlimited disk of the same VM is faster;
//! `bw=0` is a config error.

use std::time::Duration;
use test_infra::scenario::{field, sh_quote};
use test_infra::TestBed;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";
const MIB: f64 = 50.0;

/// One line for the guest shell (devtmpfs first: the initramfs has a static /dev without the
/// disks): `m TAG CMD…` runs CMD and prints `TAG-RC=` and `TAG-SECS=`
/// (wall time from the guest's uptime, in hundredths).
const GUEST_CMDS: &str = r#"mount -t devtmpfs devtmpfs /dev 2>/dev/null; t() { cut -d' ' -f1 /proc/uptime; }; m() { tag=$1; shift; a=$(t); "$@" 2>/dev/null; rc=$?; b=$(t); echo "$tag-RC=$rc"; echo "$tag-SECS=$(awk -v a=$a -v b=$b 'BEGIN{print b-a}')"; }; m LIMITED-WRITE dd if=/dev/zero of=/dev/vda bs=1M count=50 oflag=direct; m LIMITED-READ dd if=/dev/vda of=/dev/null bs=1M count=50 iflag=direct; m FREE-WRITE dd if=/dev/zero of=/dev/vdb bs=1M count=50 oflag=direct; poweroff -f"#;

/// MiB/s of the guest's `dd` tagged `tag`, after checking that it succeeded.
fn rate(console: &str, tag: &str) -> f64 {
    assert_eq!(
        field(console, &format!("{tag}-RC=")),
        Some("0"),
        "{tag}: dd failed; console:\n{console}"
    );
    let secs: f64 = field(console, &format!("{tag}-SECS="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {tag}-SECS; console:\n{console}"));
    let rate = MIB / secs.max(0.01);
    println!("{tag}: {MIB} MiB in {secs:.2} s = {rate:.2} MiB/s");
    rate
}

#[test]
fn testbed_ratelimit_disk_10mib_per_second() {
    let scenario = format!(
        r#"
dd if=/dev/zero of=/tmp/limited.img bs=1M count=64 2>/dev/null
dd if=/dev/zero of=/tmp/free.img bs=1M count=64 2>/dev/null
vm_shell limit 600 {cmds} --kernel bzImage --initrd initramfs.cpio.gz --cmdline {cmdline} --cpus 1 --memory 256M --disk path=/tmp/limited.img,bw=10M --disk path=/tmp/free.img
vm baddisk 60 --kernel bzImage --initrd initramfs.cpio.gz --disk path=/tmp/free.img,bw=0
"#,
        cmds = sh_quote(GUEST_CMDS),
        cmdline = sh_quote(CMDLINE),
    );
    let run = TestBed::new("ratelimit")
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .timeout(Duration::from_secs(420))
        .scenario_with_prelude(&scenario)
        .run();
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    let boot = run.boot("limit");
    let c = &boot.console;
    assert_eq!(boot.rc, Some(0), "kapsel exit code; console:\n{c}");

    let write = rate(c, "LIMITED-WRITE");
    let read = rate(c, "LIMITED-READ");
    let free = rate(c, "FREE-WRITE");
    for (what, r) in [("write", write), ("read", read)] {
        assert!(
            (9.0..=11.0).contains(&r),
            "10 MiB/s limit, {what}: measured {r:.2} MiB/s"
        );
    }
    assert!(
        free > 11.0,
        "the unlimited disk must be faster than the limit: {free:.2} MiB/s"
    );

    let bad = run.boot("baddisk");
    assert_eq!(bad.rc, Some(1), "bw=0 is a config error:\n{}", bad.console);
    assert!(
        bad.console.contains("--disk: invalid bw '0'"),
        "{}",
        bad.console
    );
}
