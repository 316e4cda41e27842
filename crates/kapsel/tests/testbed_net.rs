//! virtio-net end to end in the nested test bed: an L2 guest on a TAP kapsel creates
//! (`--net tap=auto,ip=…`) pings L1 and moves 100 MB each way over TCP with busybox `nc`,
//! checksums compared on both ends; the TAP is gone after kapsel exits; bad `--net`/`--vsock`
//! options and a TAP that cannot be created end kapsel with one line and exit code 1.

use std::time::Duration;
use test_infra::scenario::{field, sh_quote, Boot};
use test_infra::{TestBed, TestBedRun};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";
const MB: u32 = 100;

fn testbed(name: &str) -> TestBed {
    TestBed::new(name)
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .memory("3G")
        .timeout(Duration::from_secs(420))
}

fn print_boots(run: &TestBedRun) {
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    for b in run.boots() {
        println!("  {}: rc={:?} {:?}s in L1", b.name, b.rc, b.seconds);
    }
}

fn one_line_error(boot: &Boot, needle: &str) {
    assert_eq!(
        boot.rc,
        Some(1),
        "{}: exit code; console:\n{}",
        boot.name,
        boot.console
    );
    let lines: Vec<&str> = boot
        .console
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{}: one line expected:\n{}",
        boot.name,
        boot.console
    );
    assert!(
        lines[0].starts_with("kapsel: ") && lines[0].contains(needle),
        "{}: {:?} lacks {needle:?}",
        boot.name,
        lines[0]
    );
}

#[test]
fn testbed_net_ping_and_100mb_each_way_over_tap() {
    // devtmpfs first: the initramfs's static /dev has no urandom; `m TAG CMD…` runs CMD and
    // prints `TAG-SECS=` (guest uptime, hundredths)
    let guest_cmds = format!(
        "mount -t devtmpfs devtmpfs /dev 2>/dev/null; t() {{ cut -d' ' -f1 /proc/uptime; }}; \
         m() {{ tag=$1; shift; a=$(t); \"$@\"; b=$(t); \
         echo \"$tag-SECS=$(awk -v a=$a -v b=$b 'BEGIN{{print b-a}}')\"; }}; \
         mkdir -p /data; ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; \
         ping -c 3 -W 5 10.0.2.1 >/dev/null; echo PING-RC=$?; \
         dd if=/dev/urandom of=/data/g2h bs=1M count={MB} 2>/dev/null; \
         echo G2H-GUEST-MD5 $(md5sum < /data/g2h); \
         m G2H nc 10.0.2.1 5001 < /data/g2h; rm /data/g2h; \
         m H2G nc -l -p 5002 -e sh -c \"cat > /data/h2g\"; \
         echo H2G-GUEST-MD5 $(md5sum < /data/h2g); echo H2G-GUEST-BYTES $(wc -c < /data/h2g); \
         poweroff -f"
    );
    let scenario = format!(
        r#"
dd if=/dev/urandom of=/tmp/h2g bs=1M count={MB} 2>/dev/null
echo "H2G-HOST-MD5 $(md5sum < /tmp/h2g)"
(nc -l -p 5001 -e sh -c 'cat > /tmp/g2h'; echo "G2H-HOST-MD5 $(md5sum < /tmp/g2h)"; echo "G2H-HOST-BYTES $(wc -c < /tmp/g2h)"; rm -f /tmp/g2h) &
g2h=$!
(i=0; while [ $i -lt 900 ] && ! ping -c 1 -W 1 10.0.2.15 >/dev/null 2>&1; do sleep 1; i=$((i+1)); done
 ping -c 3 -W 5 10.0.2.15 >/dev/null; echo "HOST-PING-RC=$?"
 i=0; while [ $i -lt 900 ]; do
   if nc 10.0.2.15 5002 < /tmp/h2g 2>/dev/null; then echo H2G-HOST-SENT; break; fi
   sleep 1; i=$((i+1)); done) &
h2g=$!
vm_shell net 1200 {cmds} --kernel bzImage --initrd initramfs.cpio.gz --cmdline {cmdline} --cpus 2 --memory 512M --net tap=auto,ip=10.0.2.1/24
if ip link show kapsel0 >/dev/null 2>&1; then echo TAP-LEFT; else echo TAP-GONE; fi
vm badtap 60 --kernel bzImage --initrd initramfs.cpio.gz --net tap=lo
vm badnet 60 --kernel bzImage --initrd initramfs.cpio.gz --net tap=auto,colour=red
vm nonet 60 --kernel bzImage --initrd initramfs.cpio.gz --net mac=52:54:00:00:00:01
vm badvsock 60 --kernel bzImage --initrd initramfs.cpio.gz --vsock cid=2,socket=/tmp/v.sock
# The VM has ended: in a good run both transfers are done; if it died early, the L1 ends
# must not keep the test bed waiting into its timeout.
kill $g2h $h2g 2>/dev/null
wait
"#,
        cmds = sh_quote(&guest_cmds),
        cmdline = sh_quote(CMDLINE),
    );
    let mut run = testbed("net").scenario_with_prelude(&scenario).run();
    print_boots(&run);
    // A guest vCPU sometimes triple-faults in the test bed under this load (seen 2 times in
    // about 8 runs here, the same family as the 4-vCPU boot flake in testbed_linux; cause not
    // found yet). One fresh attempt, loudly: before the L1 ends were stopped above, such a
    // run hung into the test-bed timeout and was retried by the harness anyway.
    if run.boot("net").rc == Some(3) {
        println!(
            "WARNING: the net VM triple-faulted; retrying the scenario once. Console:\n{}",
            run.boot("net").console
        );
        run = testbed("net").scenario_with_prelude(&scenario).run();
        print_boots(&run);
    }
    let out = &run.output;
    let net = run.boot("net");
    let c = &net.console;
    assert_eq!(net.rc, Some(0), "kapsel exit code; console:\n{c}");

    // the card bound its driver with MSI-X
    let report = net.report();
    assert!(
        report
            .virtio
            .iter()
            .any(|d| d.driver == "virtio_net" && d.device_id.ends_with('1')),
        "no virtio_net device in {:?}",
        report.virtio
    );
    let msi: u32 = report
        .get("msi-irqs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(msi >= 2, "MSI-X interrupts in use: {msi}");

    assert_eq!(
        field(c, "PING-RC="),
        Some("0"),
        "guest → L1 ping; console:\n{c}"
    );
    let g2h_guest = field(c, "G2H-GUEST-MD5 ").expect("guest checksum of its data");
    let g2h_host = field(out, "G2H-HOST-MD5 ").expect("L1 checksum of received data");
    assert_eq!(
        field(out, "G2H-HOST-BYTES "),
        Some(format!("{}", MB << 20).as_str())
    );
    assert_eq!(g2h_guest, g2h_host, "guest → L1 data intact");
    let h2g_host = field(out, "H2G-HOST-MD5 ").expect("L1 checksum of its data");
    let h2g_guest = field(c, "H2G-GUEST-MD5 ").expect("guest checksum of received data");
    assert_eq!(
        field(c, "H2G-GUEST-BYTES "),
        Some(format!("{}", MB << 20).as_str())
    );
    assert_eq!(h2g_host, h2g_guest, "L1 → guest data intact");
    assert_eq!(field(out, "HOST-PING-RC="), Some("0"), "L1 → guest ping");
    for dir in ["G2H", "H2G"] {
        let secs = field(c, &format!("{dir}-SECS="))
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {dir}-SECS; console:\n{c}"));
        println!(
            "{dir}: {MB} MB in {secs:.2} s ({:.1} MB/s)",
            f64::from(MB) / secs.max(0.01)
        );
    }
    assert!(
        out.contains("TAP-GONE"),
        "the TAP kapsel created must be removed"
    );

    one_line_error(&run.boot("badtap"), "TAP 'lo'");
    one_line_error(&run.boot("badnet"), "--net: unknown key 'colour'");
    one_line_error(&run.boot("nonet"), "--net: missing 'tap='");
    one_line_error(&run.boot("badvsock"), "--vsock: invalid cid");
}
