//! virtio-balloon end to end in the nested test bed, with a real Linux guest of 512 MiB:
//!
//! - `inflate`: the guest touches 320 MiB (tmpfs, then deleted), so the VMM's RSS in L1 is
//!   high; `kapsel vm balloon --target 256M` inflates the balloon: the guest's MemTotal and
//!   MemAvailable drop and kapsel's VmRSS falls; `--target 0` deflates it: MemTotal returns
//!   and, once the guest touches its memory again, so does the RSS. The guest's statistics
//!   (`stats_period=1`) reach `GET /vm/balloon`.
//! - `report`: with `free_page_reporting=on`, memory the guest frees (a deleted 320 MiB
//!   tmpfs file) is reported and freed on the host without any balloon target. Then, with
//!   `deflate_on_oom=on` and a 400 MiB balloon, the guest writes 200 MiB: its OOM notifier
//!   deflates the balloon (its actual size follows) and no process is killed.
//!
//! The numbers (guest /proc/meminfo, kapsel's VmRSS, the API's answers) are printed.

use std::time::Duration;

use api::vm::BalloonInfo;
use test_infra::scenario::{field, sh_quote};
use test_infra::TestBed;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";
const MIB_KB: u64 = 1024;

/// Guest shell helpers (devtmpfs first: the initramfs's static /dev has no /dev/zero):
/// `mi TAG` prints `MEMINFO TAG MemTotal: N kB MemAvailable: N kB`,
/// `fill` writes 320 MiB to a tmpfs, `waitfor COND` polls COND for up to 300 s. (Markers are
/// typed as `STEP$((0+N))` so the tty's echo of the typed line never matches `STEPN`.)
const GUEST_HELPERS: &str = r#"mount -t devtmpfs devtmpfs /dev 2>/dev/null; mkdir -p /mnt/b; mount -t tmpfs -o size=460m tmpfs /mnt/b; mi() { echo "MEMINFO $1 $(grep -E '^(MemTotal|MemAvailable):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"; }; total() { awk '/^MemTotal:/{print $2}' /proc/meminfo; }; avail() { awk '/^MemAvailable:/{print $2}' /proc/meminfo; }; fill() { dd if=/dev/zero of=/mnt/b/fill bs=1M count=320 2>/dev/null; echo "FILL-RC=$?"; }; waitfor() { i=0; while [ $i -lt 300 ] && ! eval "$1"; do sleep 1; i=$((i+1)); done; }; t0=$(total); "#;

/// The inflate/deflate guest: touch, wait for the balloon to take 200+ MiB, wait for it to
/// give them back, touch again.
const INFLATE_GUEST: &str = r#"fill; rm /mnt/b/fill; mi touched; echo STEP$((0+1)); waitfor '[ $(total) -lt $((t0 - 200*1024)) ]'; mi inflated; echo STEP$((0+2)); waitfor '[ $(total) -gt $((t0 - 16*1024)) ]'; mi deflated; fill; rm /mnt/b/fill; mi retouched; echo STEP$((0+3)); sleep 10; poweroff -f"#;

/// The free page reporting guest: touch and keep, then free and give the guest's reporting
/// (2 s delay, then in batches) time.
/// Then deflate-on-OOM: once the balloon holds 300+ MiB (L1 sets a 400 MiB target; with
/// deflate-on-OOM the driver leaves MemTotal alone, so the guest watches MemAvailable), the
/// guest writes 200 MiB to its tmpfs, more than it has left: its OOM notifier takes pages
/// back from the balloon instead of killing anything.
const REPORT_GUEST: &str = r#"fill; mi filled; echo STEP$((0+1)); sleep 10; rm /mnt/b/fill; sleep 20; mi freed; echo STEP$((0+2)); waitfor '[ $(avail) -lt $((t0 - 300*1024)) ]'; mi oominflated; dd if=/dev/zero of=/mnt/b/oom bs=1M count=200 2>/dev/null; echo "OOM-FILL-RC=$?"; mi oomfilled; echo STEP$((0+3)); sleep 5; poweroff -f"#;

/// L1 helpers for the controller that runs beside `vm_shell`: `rss` prints kapsel's VmRSS in
/// kB, `step NAME N` waits for the guest's `STEPN`, `bal SOCK ARGS…` runs
/// `kapsel vm balloon` and prints its JSON on one line after `BALLOON-JSON TAG`.
const L1_HELPERS: &str = r#"
rss() { p=$(pidof kapsel | awk '{print $1}'); awk '/^VmRSS:/{print $2}' /proc/$p/status 2>/dev/null; }
step() { i=0; while [ $i -lt 1200 ]; do grep -q "^STEP$2" /tmp/$1.out 2>/dev/null && return 0; sleep 0.5; i=$((i+1)); done; echo "NO-STEP$2 in $1"; return 1; }
bal() { tag=$1 sock=$2; shift 2; echo "BALLOON-JSON $tag $(kapsel vm balloon --api-socket $sock "$@" | tr -d ' \n')"; }
actual() { kapsel vm balloon --api-socket $1 | tr -d ' \n' | sed -n 's/.*"actual_mib":\([0-9]*\).*/\1/p'; }
settle() { i=0; while [ $i -lt 600 ] && [ "$(actual $1)" != "$2" ]; do sleep 0.5; i=$((i+1)); done; }
"#;

/// kapsel's VmRSS (kB) at `tag`.
fn rss(out: &str, tag: &str) -> u64 {
    field(out, &format!("RSS {tag} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no RSS {tag}; output:\n{out}"))
}

/// The guest's (MemTotal, MemAvailable) in kB at `tag`.
fn meminfo(console: &str, tag: &str) -> (u64, u64) {
    let line = console
        .lines()
        .find_map(|l| l.split_once(&format!("MEMINFO {tag} ")).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no MEMINFO {tag}; console:\n{console}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |name: &str| -> u64 {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in '{line}'"))
    };
    (value("MemTotal:"), value("MemAvailable:"))
}

fn balloon_json(out: &str, tag: &str) -> BalloonInfo {
    let json = field(out, &format!("BALLOON-JSON {tag} "))
        .unwrap_or_else(|| panic!("no BALLOON-JSON {tag}; output:\n{out}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{tag}: {e}: {json}"))
}

#[test]
fn testbed_balloon_inflate_deflate_and_free_page_reporting() {
    let vm_args = "--kernel bzImage --initrd initramfs.cpio.gz --cpus 1 --memory 512M";
    let scenario = format!(
        r#"{l1}
(step inflate 1 && echo "RSS touched $(rss)" && bal set-half /tmp/inflate.sock --target 256M && settle /tmp/inflate.sock 256 && sleep 2 && echo "RSS inflated $(rss)" && bal inflated /tmp/inflate.sock \
  && step inflate 2 && bal set-zero /tmp/inflate.sock --target 0 && settle /tmp/inflate.sock 0 && bal deflated /tmp/inflate.sock \
  && step inflate 3 && echo "RSS retouched $(rss)" && bal end /tmp/inflate.sock) &
vm_shell inflate 900 {inflate} {vm_args} --cmdline {cmdline} --balloon stats_period=1 --api-socket /tmp/inflate.sock
wait
(step report 1 && echo "RSS filled $(rss)" && step report 2 && echo "RSS freed $(rss)" && bal report /tmp/report.sock \
  && bal set-oom /tmp/report.sock --target 400M && settle /tmp/report.sock 400 && bal oom-inflated /tmp/report.sock \
  && step report 3 && bal oom /tmp/report.sock) &
vm_shell report 900 {report} {vm_args} --cmdline {cmdline} --balloon free_page_reporting=on,deflate_on_oom=on --api-socket /tmp/report.sock
wait
vm badballoon 60 {vm_args} --balloon stats_period=0
"#,
        l1 = L1_HELPERS,
        inflate = sh_quote(&format!("{GUEST_HELPERS}{INFLATE_GUEST}")),
        report = sh_quote(&format!("{GUEST_HELPERS}{REPORT_GUEST}")),
        cmdline = sh_quote(CMDLINE),
    );
    let run = TestBed::new("balloon")
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .timeout(Duration::from_secs(900))
        .scenario_with_prelude(&scenario)
        .run();
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    let out = &run.output;

    // inflate and deflate
    let boot = run.boot("inflate");
    let c = &boot.console;
    assert_eq!(boot.rc, Some(0), "kapsel exit code; console:\n{c}");
    let report = boot.report();
    assert!(
        report.virtio.iter().any(|d| d.driver == "virtio_balloon"),
        "balloon driver bound: {:?}",
        report.virtio
    );
    assert_eq!(
        c.matches("\nFILL-RC=0").count(),
        2,
        "two fills; console:\n{c}"
    );
    let touched = meminfo(c, "touched");
    let inflated = meminfo(c, "inflated");
    let deflated = meminfo(c, "deflated");
    let (rss_touched, rss_inflated, rss_retouched) = (
        rss(out, "touched"),
        rss(out, "inflated"),
        rss(out, "retouched"),
    );
    for (tag, (total, avail)) in [
        ("touched", touched),
        ("inflated", inflated),
        ("deflated", deflated),
        ("retouched", meminfo(c, "retouched")),
    ] {
        println!(
            "guest {tag:9}: MemTotal {} MiB, MemAvailable {} MiB",
            total / MIB_KB,
            avail / MIB_KB
        );
    }
    println!(
        "kapsel VmRSS in L1: touched {} MiB, inflated by 256 MiB {} MiB, deflated and touched again {} MiB",
        rss_touched / MIB_KB,
        rss_inflated / MIB_KB,
        rss_retouched / MIB_KB
    );
    let half = balloon_json(out, "inflated");
    println!("GET /vm/balloon after inflating: {half:?}");
    assert_eq!((half.target_mib, half.actual_mib), (256, 256), "{half:?}");
    assert!(half.active, "{half:?}");
    assert!(half.inflated_bytes >= 256 << 20, "{half:?}");
    let stats = half.stats.expect("guest statistics (stats_period=1)");
    let total_bytes = stats.total_memory.expect("total_memory statistic");
    assert!(
        total_bytes <= (touched.0 - 200 * MIB_KB) * 1024,
        "the statistics see the inflated balloon: {stats:?}"
    );
    assert!(stats.free_memory.is_some() && stats.available_memory.is_some());
    assert!(
        inflated.0 + 200 * MIB_KB <= touched.0,
        "MemTotal drops by the balloon: {touched:?} → {inflated:?}"
    );
    assert!(
        inflated.1 + 200 * MIB_KB <= touched.1,
        "MemAvailable drops: {touched:?} → {inflated:?}"
    );
    assert!(
        rss_inflated + 64 * MIB_KB <= rss_touched,
        "inflating 256 MiB of touched memory frees host memory: {rss_touched} → {rss_inflated} kB"
    );
    let zero = balloon_json(out, "deflated");
    assert_eq!((zero.target_mib, zero.actual_mib), (0, 0), "{zero:?}");
    assert!(zero.deflated_bytes >= 256 << 20, "{zero:?}");
    assert!(
        deflated.0 + 16 * MIB_KB > touched.0,
        "MemTotal returns: {touched:?} → {deflated:?}"
    );
    assert!(
        rss_retouched >= rss_inflated + 64 * MIB_KB,
        "memory given back and touched again is host memory again: {rss_inflated} → {rss_retouched} kB"
    );

    // free page reporting
    let boot = run.boot("report");
    let c = &boot.console;
    assert_eq!(boot.rc, Some(0), "kapsel exit code; console:\n{c}");
    assert!(
        c.contains("\nFILL-RC=0"),
        "the guest filled its tmpfs; console:\n{c}"
    );
    let (rss_filled, rss_freed) = (rss(out, "filled"), rss(out, "freed"));
    let reported = balloon_json(out, "report");
    println!(
        "free page reporting: VmRSS {} MiB with 320 MiB in tmpfs, {} MiB after deleting it; {} MiB reported; {reported:?}",
        rss_filled / MIB_KB,
        rss_freed / MIB_KB,
        reported.reported_bytes >> 20
    );
    println!(
        "guest: filled {:?}, freed {:?} (MemTotal, MemAvailable kB)",
        meminfo(c, "filled"),
        meminfo(c, "freed")
    );
    assert!(reported.free_page_reporting && reported.deflate_on_oom);
    assert_eq!(reported.target_mib, 0);
    assert!(
        reported.reported_bytes >= 128 << 20,
        "the guest reported the freed memory: {reported:?}"
    );
    assert!(
        rss_freed + 128 * MIB_KB <= rss_filled,
        "reported memory is freed on the host: {rss_filled} → {rss_freed} kB"
    );

    // deflate-on-OOM: the guest wrote 200 MiB with only ~100 MiB left beside a 400 MiB
    // balloon, and the balloon gave pages back instead of the OOM killer taking a process
    let inflated = balloon_json(out, "oom-inflated");
    let after_oom = balloon_json(out, "oom");
    let (_, oom_avail_before) = meminfo(c, "oominflated");
    let (_, oom_avail_after) = meminfo(c, "oomfilled");
    println!(
        "deflate-on-OOM: balloon {} → {} MiB while the guest wrote 200 MiB (MemAvailable {} → {} MiB)",
        inflated.actual_mib,
        after_oom.actual_mib,
        oom_avail_before / MIB_KB,
        oom_avail_after / MIB_KB
    );
    assert_eq!(inflated.actual_mib, 400, "{inflated:?}");
    assert!(
        c.contains("\nOOM-FILL-RC=0"),
        "the guest wrote past its ballooned memory; console:\n{c}"
    );
    assert!(
        after_oom.actual_mib + 64 <= inflated.actual_mib,
        "the guest took pages back from the balloon on OOM: {inflated:?} → {after_oom:?}"
    );
    assert!(
        !c.contains("Out of memory: Killed process"),
        "the OOM killer ran although the balloon could deflate; console:\n{c}"
    );

    let bad = run.boot("badballoon");
    assert_eq!(bad.rc, Some(1), "stats_period=0 is a config error");
    assert!(
        bad.shows("--balloon: invalid stats_period '0'"),
        "{}",
        bad.console
    );
}
