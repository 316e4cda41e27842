//! virtio-vsock end to end in the nested test bed: a host → guest connection (through
//! `CONNECT <port>` on kapsel's UNIX socket) and a guest → host connection (to the UNIX socket
//! `PATH_<port>`) each carry 10 MB intact.
//!
//! The busybox guest has no vsock tool, so `guests/vsock-tool` is built statically and
//! appended to the shared initramfs as a second concatenated cpio.gz archive; the same binary
//! is the host side in L1.

use std::time::Duration;
use test_infra::scenario::{field, sh_quote};
use test_infra::TestBed;

#[path = "common/vsock_tool.rs"]
mod vsock_tool;
use vsock_tool::{tool_archive, vsock_tool};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";
const MB: u32 = 10;

#[test]
fn testbed_vsock_10mb_each_way() {
    let tool = vsock_tool();
    let archive = tool_archive(&tool);
    // devtmpfs first: the initramfs's static /dev has no urandom; `m TAG CMD…` runs CMD and
    // prints `TAG-SECS=` (guest uptime, hundredths) on stderr, away from CMD's redirected output
    let guest_cmds = format!(
        "mount -t devtmpfs devtmpfs /dev 2>/dev/null; t() {{ cut -d' ' -f1 /proc/uptime; }}; \
         m() {{ tag=$1; shift; a=$(t); \"$@\"; rc=$?; b=$(t); \
         echo \"$tag-SECS=$(awk -v a=$a -v b=$b 'BEGIN{{print b-a}}')\" >&2; return $rc; }}; \
         dd if=/dev/urandom of=/tmp/g2h bs=1M count={MB} 2>/dev/null; \
         echo G2H-GUEST-MD5 $(md5sum < /tmp/g2h); \
         m G2H vsock-tool connect 2 5000 < /tmp/g2h > /dev/null; echo G2H-RC=$?; \
         m H2G vsock-tool listen 6000 > /tmp/h2g; echo H2G-RC=$?; \
         echo H2G-GUEST-MD5 $(md5sum < /tmp/h2g); echo H2G-GUEST-BYTES $(wc -c < /tmp/h2g); \
         poweroff -f"
    );
    let scenario = format!(
        r#"
cat initramfs.cpio.gz vsock-tool.cpio.gz > initrd-vsock.cpio.gz
dd if=/dev/urandom of=/tmp/h2g bs=1M count={MB} 2>/dev/null
echo "H2G-HOST-MD5 $(md5sum < /tmp/h2g)"
(vsock-tool uds-listen /tmp/v.sock_5000 < /dev/null > /tmp/g2h; echo "G2H-HOST-RC=$?"; echo "G2H-HOST-MD5 $(md5sum < /tmp/g2h)"; echo "G2H-HOST-BYTES $(wc -c < /tmp/g2h)") &
(i=0; while [ $i -lt 900 ]; do
   if [ -S /tmp/v.sock ] && vsock-tool uds-connect /tmp/v.sock 6000 < /tmp/h2g > /dev/null 2>/tmp/uds.err; then echo H2G-HOST-SENT; break; fi
   sleep 1; i=$((i+1)); done; cat /tmp/uds.err) &
vm_shell vsock 900 {cmds} --kernel bzImage --initrd initrd-vsock.cpio.gz --cmdline {cmdline} --cpus 2 --memory 256M --vsock cid=3,socket=/tmp/v.sock
[ -e /tmp/v.sock ] && echo SOCKET-LEFT || echo SOCKET-GONE
kill %1 %2 2>/dev/null
wait
"#,
        cmds = sh_quote(&guest_cmds),
        cmdline = sh_quote(CMDLINE),
    );
    let run = TestBed::new("vsock")
        .with_kapsel()
        .binary(&tool)
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .file(&archive, "vsock-tool.cpio.gz")
        .timeout(Duration::from_secs(420))
        .scenario_with_prelude(&scenario)
        .run();
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    let out = &run.output;
    let boot = run.boot("vsock");
    let c = &boot.console;
    assert_eq!(boot.rc, Some(0), "kapsel exit code; console:\n{c}");
    let report = boot.report();
    assert!(
        report
            .virtio
            .iter()
            .any(|d| d.driver == "vmw_vsock_virtio_transport"),
        "vsock driver bound: {:?}",
        report.virtio
    );

    assert_eq!(
        field(c, "G2H-RC="),
        Some("0"),
        "guest connect; console:\n{c}"
    );
    assert_eq!(field(out, "G2H-HOST-RC="), Some("0"));
    assert_eq!(
        field(out, "G2H-HOST-BYTES "),
        Some(format!("{}", MB << 20).as_str())
    );
    assert_eq!(
        field(c, "G2H-GUEST-MD5 "),
        field(out, "G2H-HOST-MD5 "),
        "guest → host data intact"
    );

    assert!(out.contains("H2G-HOST-SENT"), "host connection accepted");
    assert_eq!(field(c, "H2G-RC="), Some("0"));
    assert_eq!(
        field(c, "H2G-GUEST-BYTES "),
        Some(format!("{}", MB << 20).as_str())
    );
    assert_eq!(
        field(out, "H2G-HOST-MD5 "),
        field(c, "H2G-GUEST-MD5 "),
        "host → guest data intact"
    );
    for dir in ["G2H", "H2G"] {
        if let Some(secs) = field(c, &format!("{dir}-SECS=")).and_then(|s| s.parse::<f64>().ok()) {
            println!(
                "{dir}: {MB} MB in {secs:.2} s ({:.1} MB/s)",
                f64::from(MB) / secs.max(0.01)
            );
        }
    }
    assert!(
        out.contains("SOCKET-GONE"),
        "kapsel removes its socket on exit"
    );
}
