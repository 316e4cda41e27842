//! The I/O rate limiter end to end: a disk limited to 10 MiB/s (`--disk …,bw=10M`) reads
//! 50 MiB in 5 s ± 10 % in the guest, while an unlimited disk of the same VM is faster.

use std::time::Duration;
use test_infra::scenario::sh_quote;
use test_infra::TestBed;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.split_once(key).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
}

#[test]
fn testbed_ratelimit_disk_10mib_per_second() {
    let read = |dev: &str, tag: &str| {
        format!(
            "a=$(cut -d' ' -f1 /proc/uptime | tr -d .); \
             dd if=/dev/{dev} of=/dev/null bs=1M count=50 2>/dev/null; \
             b=$(cut -d' ' -f1 /proc/uptime | tr -d .); echo {tag} $((b - a)); "
        )
    };
    let guest_cmds = format!(
        "{}{}poweroff -f",
        read("vda", "LIMITED-CENTIS"),
        read("vdb", "UNLIMITED-CENTIS")
    );
    let scenario = format!(
        r#"
dd if=/dev/zero of=/tmp/limited.img bs=1M count=64 2>/dev/null
dd if=/dev/zero of=/tmp/free.img bs=1M count=64 2>/dev/null
vm_shell limit 600 {cmds} --kernel bzImage --initrd initramfs.cpio.gz --cmdline {cmdline} --cpus 1 --memory 256M --disk path=/tmp/limited.img,bw=10M --disk path=/tmp/free.img
vm baddisk 60 --kernel bzImage --initrd initramfs.cpio.gz --disk path=/tmp/free.img,bw=0
"#,
        cmds = sh_quote(&guest_cmds),
        cmdline = sh_quote(CMDLINE),
    );
    let run = TestBed::new("ratelimit")
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .timeout(Duration::from_secs(900))
        .scenario_with_prelude(&scenario)
        .run();
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    let boot = run.boot("limit");
    let c = &boot.console;
    assert_eq!(boot.rc, Some(0), "kapsel exit code; console:\n{c}");
    let limited: f64 = field(c, "LIMITED-CENTIS ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no LIMITED-CENTIS; console:\n{c}"));
    let seconds = limited / 100.0;
    let rate = 50.0 / seconds;
    println!("limited disk: 50 MiB in {seconds:.2} s = {rate:.2} MiB/s (limit 10)");
    if let Some(free) = field(c, "UNLIMITED-CENTIS ").and_then(|v| v.parse::<f64>().ok()) {
        println!(
            "unlimited disk: 50 MiB in {:.2} s = {:.2} MiB/s",
            free / 100.0,
            5000.0 / free.max(1.0)
        );
    }
    assert!(
        (9.0..=11.0).contains(&rate),
        "10 MiB/s limit: measured {rate:.2} MiB/s"
    );
    let bad = run.boot("baddisk");
    assert_eq!(bad.rc, Some(1), "bw=0 is a config error:\n{}", bad.console);
    assert!(
        bad.console.contains("--disk: invalid bw '0'"),
        "{}",
        bad.console
    );
}
