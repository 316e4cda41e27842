//! The per-VM lifecycle API with real Linux guests (L2) inside the nested test bed: a shell
//! process in the guest counts once per 100 ms (`count-N` on the serial console) while the
//! scenario pauses and resumes the VM, snapshots it, kills the source VMM, restores the
//! snapshot in a fresh process and then as three clones side by side.
//!
//! One test-bed run (one L1 boot, one L2 boot, four restores) serves all four tests: the
//! first test to need it runs the scenario, the others read the same output. Each VMM's
//! console is framed as a `KTEST-BEGIN`/`KTEST-END` block; the scenario's own findings are
//! `LC-…` lines. Nothing here skips: a test bed that cannot start fails every test.

#[path = "common/lifecycle.rs"]
mod lifecycle;

use std::sync::OnceLock;
use std::time::Duration;

use lifecycle::{counts, field, has_line, HELPERS};
use test_infra::scenario::Boot;
use test_infra::{TestBed, TestBedRun};

/// The L2 guest: initramfs, a shell left on the console, `quiet` (every serial byte is an
/// exit TCG emulates).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";
/// Guest memory of the source VM (and so of every restored VM).
const MEMORY: &str = "256M";
/// Clones restored side by side from one snapshot, with the number each one is told.
const CLONES: [(&str, u32); 3] = [("clone-a", 111), ("clone-b", 222), ("clone-c", 333)];

/// The scenario: every step prints what it saw; the tests judge.
fn scenario() -> String {
    let mut s = String::from(HELPERS);
    s += &format!(
        r#"
CMD='{CMDLINE}'
t=$(lc_now)
lc_start src 3 run --kernel bzImage --initrd initramfs.cpio.gz --cmdline "$CMD" --cpus 1 --memory {MEMORY} --api-socket /tmp/src.sock
lc_shell src 3 && lc_time boot-to-shell "$t"
echo 'i=0; while :; do echo count-$i; i=$((i+1)); usleep 100000; done &' >&3
lc_wait_count src 5 60 && echo "LC-COUNTING src"

# a snapshot of a running VM is refused; the VM runs on
t=$(lc_now)
lc_api src snapshot /tmp/snap-running >/tmp/bad.out 2>&1; rc=$?
lc_time snapshot-running "$t"
echo "LC-BAD-SNAPSHOT rc=$rc"
sed 's/^/LC-BAD-SNAPSHOT-MSG /' /tmp/bad.out
echo "LC-BAD-SNAPSHOT-FILES n=$(ls /tmp/snap-running 2>/dev/null | wc -l)"
c=$(lc_last src); lc_wait_count src $((c + 5)) 30 && echo "LC-RUNS-ON after=$c now=$(lc_last src)"

# pause: quiet for two seconds; resume: the count goes on
t=$(lc_now)
lc_api src pause >/dev/null && lc_time pause "$t"
usleep 300000; cp /tmp/src.out /tmp/src.p1
sleep 2; cp /tmp/src.out /tmp/src.p2
cmp -s /tmp/src.p1 /tmp/src.p2 && echo "LC-PAUSE-QUIET yes" || echo "LC-PAUSE-QUIET no"
p=$(lc_last src); echo "LC-PAUSED-AT count=$p state=$(lc_api src info | grep -o '"state": *"[a-z_]*"')"
t=$(lc_now)
lc_api src resume >/dev/null && lc_time resume "$t"
lc_wait_count src $((p + 5)) 30 && echo "LC-RESUMED count=$(lc_last src)"

# snapshot of the paused VM, then the source VMM dies
lc_api src pause >/dev/null
usleep 300000
t=$(lc_now)
lc_api src snapshot /tmp/snap >/tmp/snap.out 2>&1; rc=$?
lc_time snapshot "$t"
echo "LC-SNAPSHOT rc=$rc count=$(lc_last src) files=$(ls /tmp/snap | tr '\n' ,) disk_kib=$(du -k /tmp/snap/memory | cut -f1)"
[ $rc = 0 ] || sed 's/^/LC-SNAPSHOT-MSG /' /tmp/snap.out
kill -9 "$(cat /tmp/src.pid)"; lc_reap src
exec 3>&-

# restore in a fresh process: the count goes on, the shell answers
t=$(lc_now)
lc_start rst 3 --log info restore /tmp/snap --api-socket /tmp/rst.sock
lc_wait rst 'count-' 60 && lc_time restore-to-first-count "$t"
s=$(lc_last rst); lc_wait_count rst $((s + 10)) 60
echo 'echo RESTORED-$((6*7))' >&3
lc_wait rst RESTORED-42 30 && echo "LC-RESTORED-SHELL yes"
echo "LC-RESTORED-INFO $(lc_api rst info | tr -d '\n ' | grep -o '"restored_from":"[^"]*"')"
lc_stop rst 3

# three clones of one snapshot at once
t=$(lc_now); fd=4
for k in {clones}; do lc_start $k $fd restore /tmp/snap --api-socket /tmp/$k.sock; fd=$((fd + 1)); done
for k in {clones}; do lc_wait $k 'count-' 60; done
lc_time clones-to-first-count "$t"
fd=4; n=111
for k in {clones}; do
  echo "echo $k-is-\$(($n+0))-\$((1+1))" >&$fd
  fd=$((fd + 1)); n=$((n + 111))
done
for k in {clones}; do s=$(lc_last $k); lc_wait_count $k $((s + 10)) 60; done
fd=4; for k in {clones}; do lc_stop $k $fd; fd=$((fd + 1)); done

for k in src rst {clones}; do lc_dump $k; done
echo "LC-DONE"
"#,
        clones = CLONES.map(|(name, _)| name).join(" "),
    );
    s
}

/// The one test-bed run all tests read; a harness failure is kept as text so every test
/// reports it (and the test bed is not retried per test).
fn run() -> &'static TestBedRun {
    static RUN: OnceLock<Result<TestBedRun, String>> = OnceLock::new();
    let result = RUN.get_or_init(|| {
        let run = TestBed::new("lifecycle")
            .with_kapsel()
            .guest_file("bzImage", "bzImage")
            .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
            .memory("3G")
            .scenario(&scenario())
            .timeout(Duration::from_secs(600))
            .try_run()
            .map_err(|e| format!("test bed lifecycle: {e}"))?;
        print_timings(&run);
        Ok(run)
    });
    match result {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

fn print_timings(run: &TestBedRun) {
    println!(
        "lifecycle: {} (attempts {})",
        run.result_line().unwrap_or("no NESTED-RESULT"),
        run.attempts
    );
    for line in run.output.lines().filter(|l| l.starts_with("LC-TIME ")) {
        println!("  {}", line.trim_end());
    }
    for b in run.boots() {
        let vmm_us = b
            .console
            .lines()
            .filter(|l| l.contains("vCPUs started"))
            .find_map(|l| l.split("elapsed_us=").nth(1))
            .map(|v| format!(", restore to vCPUs started {} us (VMM clock)", v.trim()))
            .unwrap_or_default();
        println!(
            "  {}: rc={:?}, {:?} s in L1{vmm_us}",
            b.name, b.rc, b.seconds
        );
    }
}

/// No count skipped or repeated.
fn assert_consecutive(name: &str, counts: &[u64], console: &str) {
    for w in counts.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{name}: the count jumped from {} to {}; console:\n{console}",
            w[0],
            w[1]
        );
    }
}

/// A console with at least `min` counts, consecutive.
fn counted(run: &TestBedRun, name: &str, min: usize) -> (Boot, Vec<u64>) {
    let boot = run.boot(name);
    let c = counts(&boot.console);
    assert!(
        c.len() >= min,
        "{name}: {} counts, wanted at least {min}; console:\n{}\n\nscenario:\n{}",
        c.len(),
        boot.console,
        run.tail(80)
    );
    assert_consecutive(name, &c, &boot.console);
    (boot, c)
}

/// The count at the snapshot (the last one the source printed).
fn snapshot_count(run: &TestBedRun) -> u64 {
    assert_eq!(
        field(run, "LC-SNAPSHOT ", "rc").as_deref(),
        Some("0"),
        "snapshot of the paused VM failed:\n{}",
        run.tail(80)
    );
    field(run, "LC-SNAPSHOT ", "count")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no count at the snapshot:\n{}", run.tail(80)))
}

/// A restored console picks up the count right after the snapshot's: the first count is
/// the next one (or the one after, when the snapshot caught a line half written).
fn assert_continues(name: &str, counts: &[u64], at_snapshot: u64, console: &str) {
    let first = counts[0];
    assert!(
        first > at_snapshot && first <= at_snapshot + 2,
        "{name}: the restored count starts at {first}, the snapshot was at {at_snapshot}; \
         console:\n{console}"
    );
}

/// Test 1: the guest counts, is paused (no output for two seconds), resumed, and goes on
/// with the next number.
#[test]
fn testbed_lifecycle_count_survives_pause_and_resume() {
    let run = run();
    assert!(
        has_line(run, "LC-COUNTING src"),
        "the guest never counted:\n{}",
        run.tail(80)
    );
    assert!(
        has_line(run, "LC-PAUSE-QUIET yes"),
        "console output while paused:\n{}",
        run.tail(80)
    );
    let state = field(run, "LC-PAUSED-AT ", "state").unwrap_or_default();
    assert!(
        run.output.contains("LC-PAUSED-AT") && run.output.contains(r#""state": "paused""#),
        "info while paused: {state:?}\n{}",
        run.tail(80)
    );
    let paused_at: u64 = field(run, "LC-PAUSED-AT ", "count")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no count at the pause:\n{}", run.tail(80)));
    let resumed: u64 = field(run, "LC-RESUMED ", "count")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no count after resume:\n{}", run.tail(80)));
    assert!(resumed >= paused_at + 5, "{paused_at} -> {resumed}");
    // The whole source console, pause included, has no gap and no repeat.
    let (_, c) = counted(run, "src", (resumed + 1) as usize);
    assert!(c.contains(&paused_at) && c.contains(&(paused_at + 1)));
}

/// Test 2: snapshot of the paused VM, the source VMM killed, a restore in a fresh process
/// counts on from the snapshot and its shell still answers.
#[test]
fn testbed_lifecycle_snapshot_then_restore_in_a_fresh_process_counts_on() {
    let run = run();
    let at = snapshot_count(run);
    let files = field(run, "LC-SNAPSHOT ", "files").unwrap_or_default();
    assert!(
        files.contains("memory") && files.contains("state"),
        "snapshot files: {files}"
    );
    let (boot, c) = counted(run, "rst", 10);
    assert_continues("rst", &c, at, &boot.console);
    assert!(
        has_line(run, "LC-RESTORED-SHELL yes") && boot.shows("RESTORED-42"),
        "the restored shell did not answer; console:\n{}",
        boot.console
    );
    assert!(
        boot.shows("vCPUs started"),
        "restore --log info: no `vCPUs started` line; console:\n{}",
        boot.console
    );
    assert!(
        run.output
            .contains(r#"LC-RESTORED-INFO "restored_from":"/tmp/snap""#),
        "info of the restored VM:\n{}",
        run.tail(80)
    );
    assert!(has_line(run, "LC-EXIT rst rc=0"), "{}", run.tail(80));
}

/// Test 3: three clones of one snapshot run at once; each counts on from the snapshot and
/// answers only what it was told.
#[test]
fn testbed_lifecycle_three_clones_count_independently() {
    let run = run();
    let at = snapshot_count(run);
    for (name, n) in CLONES {
        let (boot, c) = counted(run, name, 10);
        assert_continues(name, &c, at, &boot.console);
        let mine = format!("{name}-is-{n}-2");
        assert!(
            boot.shows(&mine),
            "{name}: no {mine}; console:\n{}",
            boot.console
        );
        for (other, m) in CLONES {
            if other != name {
                let theirs = format!("{other}-is-{m}-2");
                assert!(
                    !boot.shows(&theirs),
                    "{name} shows {theirs}: consoles mixed up"
                );
            }
        }
        assert!(
            has_line(run, &format!("LC-EXIT {name} rc=0")),
            "{name} did not stop cleanly:\n{}",
            run.tail(80)
        );
    }
}

/// Test 4: `kapsel vm snapshot` of a running VM fails with one clear line and a non-zero
/// exit, writes nothing, and the VM keeps counting.
#[test]
fn testbed_lifecycle_snapshot_of_a_running_vm_is_refused() {
    let run = run();
    let rc = field(run, "LC-BAD-SNAPSHOT ", "rc").unwrap_or_default();
    assert!(
        !rc.is_empty() && rc != "0",
        "snapshot of a running VM: rc {rc:?}\n{}",
        run.tail(80)
    );
    let msgs: Vec<&str> = run
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("LC-BAD-SNAPSHOT-MSG "))
        .collect();
    assert_eq!(msgs.len(), 1, "one line on stderr: {msgs:?}");
    assert!(
        msgs[0].starts_with("kapsel: ") && msgs[0].contains("paused"),
        "unclear message: {:?}",
        msgs[0]
    );
    assert_eq!(
        field(run, "LC-BAD-SNAPSHOT-FILES ", "n").as_deref(),
        Some("0"),
        "files written by the refused snapshot"
    );
    assert!(
        run.output.lines().any(|l| l.starts_with("LC-RUNS-ON ")),
        "the VM stopped counting after the refused snapshot:\n{}",
        run.tail(80)
    );
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn counts_are_found_inside_other_text() {
        assert_eq!(
            counts("count-1\r\ncount-2xcount-$i count-3\ncount-"),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn scenario_names_every_clone() {
        let s = scenario();
        for (name, _) in CLONES {
            assert!(s.contains(name));
        }
        assert!(!s.contains("{clones}"));
    }
}
