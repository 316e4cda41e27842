//! The Debian image the project builds (`scripts/guest-artifacts.sh --debian-image`:
//! debootstrap bookworm minbase + fio + iperf3, init `guests/linux/guest-init.sh`) boots under
//! kapsel with `root=/dev/vda` inside the nested test bed, and runs a Debian userland:
//! `/etc/os-release` says bookworm, Debian's `fio` and `iperf3` run, and a short `fio` job at
//! I/O depth 32 (libaio, O_DIRECT) on a second virtio disk completes every request (a queue
//! that stalls under a deep queue ends this test at its timeout, not in a hang).

use std::time::Duration;

use test_infra::scenario::sh_quote;
use test_infra::{debian_image, TestBed};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw quiet guest.exit=shell";
const BOOT_TIMEOUT: u32 = 420;

fn line_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.find(key).map(|p| &l[p + key.len()..]))
        // The shell echoes the typed command line: skip its `$(…)` forms.
        .find(|v| !v.starts_with('$') && !v.starts_with('"'))
        .map(str::trim)
}

fn scenario() -> String {
    let commands = [
        ". /etc/os-release",
        "echo OS-ID=$ID-$VERSION_CODENAME",
        "echo DEBIAN-VERSION=$(cat /etc/debian_version)",
        "echo DPKG-COUNT=$(dpkg-query -W | wc -l)",
        "echo FIO-VERSION=$(fio --version)",
        "echo IPERF3-VERSION=$(iperf3 --version | head -n 1 | cut -d' ' -f2)",
        // 4k random reads, 32 in flight, O_DIRECT on the scratch disk; in fio's terse line
        // field 5 is the error code, 6 the KiB read
        "fio --name=qd32 --filename=/dev/vdb --readonly --rw=randread --bs=4k --iodepth=32 \
         --ioengine=libaio --direct=1 --size=32M --io_size=64M --minimal > /tmp/fio.out 2>&1; \
         echo FIO-RC=$?; echo FIO-ERR=$(cut -d';' -f5 /tmp/fio.out); \
         echo FIO-READ-KIB=$(cut -d';' -f6 /tmp/fio.out)",
        // minbase has no poweroff (no init system): the kernel's sysrq does it, once the
        // console has sent the lines above (its "sysrq: Power Off" once cut one in two)
        "sleep 1",
        "echo o > /proc/sysrq-trigger",
    ]
    .join("; ");
    format!(
        "truncate -s 64M scratch.img\n\
         vm_shell debian {BOOT_TIMEOUT} {} --kernel bzImage --cmdline {} --cpus 2 --memory 512M \
         --disk path=debian.ext4 --disk path=scratch.img\n",
        sh_quote(&commands),
        sh_quote(CMDLINE)
    )
}

#[test]
fn testbed_debian_image_boots_from_vda_and_runs_fio() {
    let image = debian_image();
    let run = TestBed::new("debian")
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .file(&image, "debian.ext4")
        // the image travels in L1's initramfs and is unpacked into its RAM
        .memory("3G")
        .scenario_with_prelude(&scenario())
        .timeout(Duration::from_secs(900))
        .run();
    println!(
        "debian: {} (attempts {})",
        run.result_line().unwrap_or("no NESTED-RESULT"),
        run.attempts
    );
    let boot = run.boot("debian");
    let c = &boot.console;
    println!("  debian: rc={:?} {:?}s in L1", boot.rc, boot.seconds);
    let report = boot.report();
    assert!(report.ready, "no GUEST-READY:\n{c}");
    assert!(
        report.get("root").is_some_and(|r| r.contains("ext4")),
        "root is {:?}:\n{c}",
        report.get("root")
    );
    assert!(
        run.output.contains("KTEST-SHELL debian up=1"),
        "the Debian shell never came up:\n{c}"
    );
    assert_eq!(line_value(c, "OS-ID="), Some("debian-bookworm"), "{c}");
    assert!(
        line_value(c, "DEBIAN-VERSION=").is_some_and(|v| v.starts_with("12")),
        "{c}"
    );
    let packages: u32 = line_value(c, "DPKG-COUNT=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(packages > 50, "{packages} dpkg packages:\n{c}");
    assert!(
        line_value(c, "FIO-VERSION=").is_some_and(|v| v.starts_with("fio-3")),
        "{c}"
    );
    assert!(
        line_value(c, "IPERF3-VERSION=").is_some_and(|v| v.starts_with('3')),
        "{c}"
    );
    assert_eq!(line_value(c, "FIO-RC="), Some("0"), "{c}");
    assert_eq!(line_value(c, "FIO-ERR="), Some("0"), "{c}");
    assert_eq!(line_value(c, "FIO-READ-KIB="), Some("65536"), "{c}");
    assert_eq!(boot.rc, Some(0), "kapsel exit:\n{c}");
    // the guest powered itself off: kapsel was not stopped by the scenario's timeout
    assert!(
        boot.seconds
            .is_some_and(|s| s < f64::from(BOOT_TIMEOUT) - 10.0),
        "the VM ran {:?} s: it did not power off by itself:\n{c}",
        boot.seconds
    );
}
