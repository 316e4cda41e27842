//! Snapshots of real Linux guests (L2) with virtio devices, in the nested test bed: a guest
//! with an ext4 disk (`--disk`), a card on a TAP (`--net`) and vsock counts once per 100 ms
//! (`count-N`) while it is paused and snapshotted; the source VMM is killed, then
//! (a) a fresh process restores it: the count goes on, the disk takes a file (write, sync,
//! drop caches, read back), L1 pings the guest and the guest pings L1 (on a new auto TAP, so
//! L1 speaks first: its ARP request replaces the guest's entry for the old TAP's MAC), and a
//! vsock connection from L1 reaches the listener the guest opened before the snapshot;
//! (b) three clones run side by side from the same snapshot, each with its own TAP, MAC, host
//! address, vsock socket and CID, and its own qcow2 overlay over the snapshot's disk
//! (`kapsel restore --net … --vsock … --disk id=disk0,path=CLONE.qcow2,format=qcow2`): each
//! counts on, pings its own L1 address, receives its own vsock message and reads back only
//! its own file; the shared base stays byte for byte as it was.
//!
//! One test-bed run serves both tests (the first to need it runs it). Each VMM's console is a
//! `KTEST-BEGIN`/`KTEST-END` block; the scenario's findings are `SD-…` lines. Nothing skips.

#[path = "common/lifecycle.rs"]
mod lifecycle;
#[path = "common/vsock_tool.rs"]
mod vsock_tool;

use std::sync::OnceLock;
use std::time::Duration;

use lifecycle::{counts, field, has_line, HELPERS};
use test_infra::scenario::Boot;
use test_infra::{TestBed, TestBedRun};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";
const CLONES: [&str; 3] = ["cl1", "cl2", "cl3"];

/// The scenario (busybox sh in L1); every step prints what it saw, the tests judge.
fn scenario() -> String {
    let mut s = String::from(HELPERS);
    s += &format!(
        r#"
# a VMM that ended closes its FIFO: writing to it must fail, not kill the scenario
trap '' PIPE
CMD='{CMDLINE}'
cat initramfs.cpio.gz vsock-tool.cpio.gz > /tmp/initrd.cpio.gz
cp disk.ext4 /tmp/src.img
lc_start src 3 run --kernel bzImage --initrd /tmp/initrd.cpio.gz --cmdline "$CMD" --cpus 1 --memory 256M --api-socket /tmp/src.sock --disk path=/tmp/src.img --net tap=auto,ip=10.0.2.1/24 --vsock cid=3,socket=/tmp/src.vsock
lc_shell src 3
echo 'mount -t devtmpfs devtmpfs /dev 2>/dev/null; mkdir -p /mnt; mount /dev/vda /mnt && echo MOUNTED-$((3*3)); ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; ping -c 1 -W 5 10.0.2.1 >/dev/null && echo PING-BEFORE-$((2+2))' >&3
lc_wait src MOUNTED-9 60 && echo "SD-MOUNTED src"
lc_wait src PING-BEFORE-4 60 && echo "SD-PING-BEFORE src"
# a vsock listener opened before the snapshot; it prints what it receives after a restore
# (stdin from /dev/null and a job that never ends: the interactive shell on the console
# must not see the job finish while it reads the console)
echo '(vsock-tool listen 6000 > /tmp/vs.out 2>/dev/null; echo VSOCK-GOT-$(cat /tmp/vs.out) > /dev/console; exec sleep 1000000) < /dev/null > /dev/null 2>&1 &' >&3
echo 'i=0; while :; do echo count-$i; i=$((i+1)); usleep 100000; done &' >&3
lc_wait_count src 5 60 && echo "SD-COUNTING src"

lc_api src pause >/dev/null
usleep 300000
t=$(lc_now)
lc_api src snapshot /tmp/snap >/tmp/snap.out 2>&1; rc=$?
lc_time snapshot "$t"
echo "SD-SNAPSHOT rc=$rc count=$(lc_last src)"
[ $rc = 0 ] || sed 's/^/SD-SNAPSHOT-MSG /' /tmp/snap.out
kill -9 "$(cat /tmp/src.pid)"; lc_reap src
exec 3>&-
# the disk as it was at the snapshot becomes the clones' read-only base; each clone gets a
# qcow2 overlay over it (copy-on-write: an overlay holds only what its clone writes)
cp /tmp/src.img /tmp/base.img
base_sum=$(md5sum < /tmp/base.img)
for k in {clones}; do
  kapsel disk create /tmp/$k.qcow2 --backing /tmp/base.img --backing-format raw >/dev/null 2>/tmp/$k.create; echo "SD-OVERLAY $k rc=$?"
  echo "SD-OVERLAY-SIZE $k $(stat -c %s /tmp/$k.qcow2)"
done

# (a) a fresh process, the saved configuration as it was (a new auto TAP with 10.0.2.1)
t=$(lc_now)
lc_start rst 3 --log info restore /tmp/snap --api-socket /tmp/rst.sock
lc_wait rst 'count-' 60 && lc_time restore-to-first-count "$t"
s=$(lc_last rst); lc_wait_count rst $((s + 10)) 60
echo 'echo restored-$((40+2)) > /mnt/probe; sync; echo 3 > /proc/sys/vm/drop_caches; echo DISK-$(cat /mnt/probe)' >&3
lc_wait rst DISK-restored-42 60 && echo "SD-DISK rst"
# The auto TAP is a new interface with a new MAC: the guest's ARP entry for 10.0.2.1 is
# stale until L1 speaks first (its ARP request updates the guest's entry) or it expires.
echo "SD-L1 $(ip -o link show | grep -o 'kapsel[0-9]*' | tr '\n' ' ')"
ping -c 1 -W 5 10.0.2.15 >/dev/null && echo "SD-HOST-PING rst"
echo 'ping -c 1 -W 5 10.0.2.1 >/dev/null && echo PING-AFTER-$((3+4)); echo NEIGH $(ip neigh)' >&3
lc_wait rst PING-AFTER-7 60 && echo "SD-PING rst"
echo hello-rst | vsock-tool uds-connect /tmp/src.vsock 6000 >/dev/null 2>/tmp/rst.uds; echo "SD-VSOCK-SEND rst rc=$?"
lc_wait rst VSOCK-GOT-hello-rst 60 && echo "SD-VSOCK rst"
s=$(lc_last rst); lc_wait_count rst $((s + 5)) 60 && echo "SD-COUNTS-ON rst"
lc_stop rst 3

# (b) three clones at once, each with its own TAP, MAC, host address, vsock and disk
t=$(lc_now); fd=4; n=1
for k in {clones}; do
  lc_start $k $fd restore /tmp/snap --api-socket /tmp/$k.sock --net id=net0,tap=$k,mac=52:54:00:00:00:1$n,ip=10.0.1$n.1/24 --vsock socket=/tmp/$k.vsock,cid=1$n --disk id=disk0,path=/tmp/$k.qcow2,format=qcow2
  fd=$((fd + 1)); n=$((n + 1))
done
for k in {clones}; do lc_wait $k 'count-' 60; done
lc_time clones-to-first-count "$t"
fd=4; n=1
for k in {clones}; do
  echo "ip link set eth0 down; ip link set eth0 address 52:54:00:00:00:1$n; ip link set eth0 up; ip addr flush dev eth0; ip addr add 10.0.1$n.15/24 dev eth0; echo $k-data > /mnt/who; sync; ping -c 1 -W 5 10.0.1$n.1 >/dev/null && echo PING-$k-OK; echo MAC-\$(cat /sys/class/net/eth0/address)" >&$fd
  fd=$((fd + 1)); n=$((n + 1))
done
for k in {clones}; do lc_wait $k PING-$k-OK 60 && echo "SD-PING $k"; done
# every clone wrote its own name; read it back from its disk after the others wrote theirs
fd=4
for k in {clones}; do echo 'echo 3 > /proc/sys/vm/drop_caches; echo WHO-$(cat /mnt/who)' >&$fd; fd=$((fd + 1)); done
for k in {clones}; do lc_wait $k WHO- 60; done
for k in {clones}; do echo hello-$k | vsock-tool uds-connect /tmp/$k.vsock 6000 >/dev/null 2>/tmp/$k.uds; echo "SD-VSOCK-SEND $k rc=$?"; done
for k in {clones}; do lc_wait $k VSOCK-GOT-hello-$k 60 && echo "SD-VSOCK $k"; done
for k in {clones}; do s=$(lc_last $k); lc_wait_count $k $((s + 5)) 60 && echo "SD-COUNTS-ON $k"; done
fd=4; for k in {clones}; do lc_stop $k $fd; fd=$((fd + 1)); done
for k in {clones}; do
  for o in {clones}; do grep -q "$o-data" /tmp/$k.qcow2 && echo "SD-IMAGE $k holds $o"; done
  kapsel disk info /tmp/$k.qcow2 2>&1 | sed "s/^/SD-INFO $k /"
done
for o in {clones}; do grep -q "$o-data" /tmp/base.img && echo "SD-IMAGE base holds $o"; done
[ "$(md5sum < /tmp/base.img)" = "$base_sum" ] && echo "SD-BASE-UNCHANGED"

for k in src rst {clones}; do lc_dump $k; done
echo "SD-DONE"
"#,
        clones = CLONES.join(" "),
    );
    s
}

fn run() -> &'static TestBedRun {
    static RUN: OnceLock<Result<TestBedRun, String>> = OnceLock::new();
    let result = RUN.get_or_init(|| {
        let tool = vsock_tool::vsock_tool();
        let archive = vsock_tool::tool_archive(&tool);
        let run = TestBed::new("snapshot-devices")
            .with_kapsel()
            .binary(&tool)
            .guest_file("bzImage", "bzImage")
            .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
            .guest_file("rootfs-busybox.ext4", "disk.ext4")
            .file(&archive, "vsock-tool.cpio.gz")
            .memory("3G")
            .scenario(&scenario())
            .timeout(Duration::from_secs(900))
            .try_run()
            .map_err(|e| format!("test bed snapshot-devices: {e}"))?;
        println!(
            "snapshot-devices: {} (attempts {})",
            run.result_line().unwrap_or("no NESTED-RESULT"),
            run.attempts
        );
        for line in run.output.lines().filter(|l| l.starts_with("LC-TIME ")) {
            println!("  {}", line.trim_end());
        }
        Ok(run)
    });
    match result {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

fn require(run: &TestBedRun, line: &str, what: &str) {
    assert!(
        has_line(run, line),
        "{what} (no `{line}`):\n{}",
        run.tail(120)
    );
}

/// The count at the snapshot, which must have succeeded.
fn snapshot_count(run: &TestBedRun) -> u64 {
    assert_eq!(
        field(run, "SD-SNAPSHOT ", "rc").as_deref(),
        Some("0"),
        "snapshot of the paused VM with virtio devices failed:\n{}",
        run.tail(120)
    );
    field(run, "SD-SNAPSHOT ", "count")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no count at the snapshot:\n{}", run.tail(120)))
}

/// A restored console counts on from the snapshot with no gap and no repeat.
fn counts_on(run: &TestBedRun, name: &str, at: u64) -> Boot {
    let boot = run.boot(name);
    let c = counts(&boot.console);
    assert!(
        c.len() >= 10,
        "{name}: {} counts; console:\n{}",
        c.len(),
        boot.console
    );
    assert!(
        c[0] > at && c[0] <= at + 2,
        "{name}: the restored count starts at {}, the snapshot was at {at}; console:\n{}",
        c[0],
        boot.console
    );
    for w in c.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{name}: the count jumped; console:\n{}",
            boot.console
        );
    }
    boot
}

/// (a) Snapshot of a guest using its disk, network and vsock; a fresh process restores it and
/// all three still work.
#[test]
fn testbed_snapshot_devices_restore_in_a_fresh_process_keeps_disk_net_and_vsock() {
    let run = run();
    require(
        run,
        "SD-MOUNTED src",
        "the source guest did not mount its disk",
    );
    require(
        run,
        "SD-PING-BEFORE src",
        "the source guest could not ping L1",
    );
    require(run, "SD-COUNTING src", "the source guest never counted");
    let at = snapshot_count(run);
    let boot = counts_on(run, "rst", at);
    require(
        run,
        "SD-DISK rst",
        "restored guest: disk write + sync + read back",
    );
    require(run, "SD-HOST-PING rst", "restored guest: ping from L1");
    require(run, "SD-PING rst", "restored guest: ping L1");
    require(
        run,
        "SD-VSOCK rst",
        "restored guest: vsock connection from L1",
    );
    require(run, "SD-COUNTS-ON rst", "restored guest stopped counting");
    assert!(
        boot.shows("vCPUs started"),
        "rst: no `vCPUs started`; console:\n{}",
        boot.console
    );
    require(
        run,
        "LC-EXIT rst rc=0",
        "the restored VMM did not stop cleanly",
    );
}

/// (b) Three clones of one snapshot at once, each on its own TAP/MAC/address, vsock
/// socket/CID and a qcow2 overlay over one shared base disk.
#[test]
fn testbed_snapshot_devices_three_clones_with_their_own_tap_vsock_and_qcow2_overlay() {
    let run = run();
    let at = snapshot_count(run);
    for (n, name) in CLONES.iter().enumerate() {
        let boot = counts_on(run, name, at);
        require(
            run,
            &format!("SD-PING {name}"),
            "clone ping of its own L1 address",
        );
        require(
            run,
            &format!("SD-VSOCK {name}"),
            "clone vsock with its own socket and CID",
        );
        require(
            run,
            &format!("SD-COUNTS-ON {name}"),
            "clone stopped counting",
        );
        let mac = format!("MAC-52:54:00:00:00:1{}", n + 1);
        assert!(
            boot.shows(&mac),
            "{name}: no {mac}; console:\n{}",
            boot.console
        );
        let who = format!("WHO-{name}-data");
        assert!(
            boot.shows(&who),
            "{name}: its disk does not hold its own file; console:\n{}",
            boot.console
        );
        for other in CLONES {
            let holds = format!("SD-IMAGE {name} holds {other}");
            assert_eq!(
                has_line(run, &holds),
                other == *name,
                "{name}'s image and {other}'s file:\n{}",
                run.tail(120)
            );
        }
        require(
            run,
            &format!("LC-EXIT {name} rc=0"),
            "a clone did not stop cleanly",
        );
        // its disk is a qcow2 overlay over the snapshot's disk, not a copy of it
        require(
            run,
            &format!("SD-OVERLAY {name} rc=0"),
            "kapsel disk create of a clone's overlay",
        );
        require(
            run,
            &format!("SD-INFO {name}   backing file: /tmp/base.img (raw)"),
            "a clone's overlay names the base as its backing file",
        );
        assert!(
            !has_line(run, &format!("SD-IMAGE base holds {name}")),
            "{name} wrote into the shared base:\n{}",
            run.tail(120)
        );
    }
    require(
        run,
        "SD-BASE-UNCHANGED",
        "the clones' shared base must not change",
    );
}
