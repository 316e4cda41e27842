//! virtio-pci, virtio-blk and virtio-rng with real Linux guests inside the nested test bed
//! (see `testbed_linux.rs` for the harness). One L1 run carries every scenario:
//!
//! - `blk-root`: boot from `root=/dev/vda` (a copy of the shared busybox ext4 image) with a
//!   second, read-only disk and the entropy device; every virtio device binds its driver and
//!   MSI-X vectors are in use.
//! - `blk-shell`: a shell on the initramfs guest checks the read-only disk (flag, serial,
//!   content; a forced write fails with an I/O error), and writes, discards and flushes a
//!   scratch disk.
//! - `durability`: the guest writes a file to an ext4 data disk and runs `sync`; kapsel is then
//!   SIGKILLed; L1 sends the image back (gzip + base64) and the host reads the file with
//!   `debugfs`, mounting nothing.
//! - bad input: a missing disk file, a directory as disk and malformed `--disk` options end
//!   kapsel with one line on stderr and exit code 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_infra::scenario::{sh_quote, Boot};
use test_infra::{TestBed, TestBedRun};

const INITRD_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet";
const ROOT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw quiet";
const BOOT_TIMEOUT: u32 = 240;
/// The first bytes of the read-only disk.
const RO_MAGIC: &str = "KAPSEL-RO-DISK-MAGIC";
const DURABLE_TEXT: &str = "kapsel-durable-4242";

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kapsel-blk-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A 1 MiB image starting with [`RO_MAGIC`].
fn ro_image(dir: &Path) -> PathBuf {
    let path = dir.join("ro.img");
    let mut data = vec![0u8; 1 << 20];
    data[..RO_MAGIC.len()].copy_from_slice(RO_MAGIC.as_bytes());
    std::fs::write(&path, data).expect("write ro.img");
    path
}

/// A small ext4 image (no journal, so it compresses to a few KiB for the trip back).
fn data_image(dir: &Path) -> PathBuf {
    let path = dir.join("data.ext4");
    let _ = std::fs::remove_file(&path);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-N", "64"])
        .arg(&path)
        .arg("4M")
        .output()
        .expect("run mkfs.ext4");
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    path
}

/// A 4 MiB zero image for writes and discards.
fn scratch_image(dir: &Path) -> PathBuf {
    let path = dir.join("scratch.img");
    std::fs::write(&path, vec![0u8; 4 << 20]).expect("write scratch.img");
    path
}

fn vm(name: &str, args: &str) -> String {
    format!("vm {name} {BOOT_TIMEOUT} {args}\n")
}

fn vm_shell(name: &str, commands: &str, args: &str) -> String {
    format!(
        "vm_shell {name} {BOOT_TIMEOUT} {} {args}\n",
        sh_quote(commands)
    )
}

/// Boots the initramfs guest with a shell and the data disk, writes a file and syncs, then
/// SIGKILLs kapsel; prints the image gzip+base64 between markers.
fn durability_script() -> String {
    let cmdline = sh_quote(&format!("{INITRD_CMDLINE} guest.exit=shell"));
    let commands = format!(
        "mount -t devtmpfs devtmpfs /dev; mount -t ext4 /dev/vda /mnt && echo {DURABLE_TEXT} > /mnt/file && sync && echo DUR-$((40+2))-SYNCED || echo DUR-$((40+1))-FAILED"
    );
    format!(
        r#"
rm -f /tmp/dur.in /tmp/dur.out; mkfifo /tmp/dur.in; : > /tmp/dur.out
echo "KTEST-BEGIN durability"
_t0=$(ktest_now)
kapsel run --kernel bzImage --initrd initramfs.cpio.gz --cmdline {cmdline} --memory 256M \
  --disk path=data.ext4,id=data <"/tmp/dur.in" >"/tmp/dur.out" 2>&1 &
_pid=$!
exec 4>/tmp/dur.in
_i=0 _phase=0
while [ $_i -lt 240 ] && kill -0 $_pid 2>/dev/null; do
  if [ $_phase = 0 ] && grep -q 'guest: exit=shell' /tmp/dur.out; then
    sleep 1; printf '%s\n' {commands} >&4; _phase=1
  fi
  if grep -q 'DUR-42-SYNCED' /tmp/dur.out; then _phase=2; break; fi
  if grep -q 'DUR-41-FAILED' /tmp/dur.out; then break; fi
  sleep 0.5; _i=$((_i + 1))
done
kill -9 $_pid 2>/dev/null; wait $_pid; _rc=$?
exec 4>&-
cat /tmp/dur.out
echo; echo "KTEST-END durability rc=$_rc seconds=$(ktest_since "$_t0")"
echo "DURABILITY-PHASE=$_phase"
echo "DATA-IMAGE-BEGIN"; gzip -c data.ext4 | base64; echo "DATA-IMAGE-END"
"#,
        commands = sh_quote(&commands)
    )
}

fn scenario() -> String {
    let mut s = String::new();
    // Boot from the root disk, with a read-only second disk and the entropy device.
    s += &vm(
        "blk-root",
        &format!(
            "--kernel bzImage --cmdline {} --cpus 2 --memory 256M --disk path=root.ext4 \
             --disk path=ro.img,readonly=on,id=ro-disk --rng",
            sh_quote(ROOT_CMDLINE)
        ),
    );
    // Read-only and scratch disk checks from a shell.
    let commands = [
        // The initramfs has a static /dev: get the device nodes.
        "mount -t devtmpfs devtmpfs /dev",
        "echo RO-FLAG=$(cat /sys/block/vda/ro)",
        "echo RO-SERIAL=$(cat /sys/block/vda/serial)",
        "echo RO-HEAD=$(head -c 20 /dev/vda)",
        "blockdev --setrw /dev/vda",
        "dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct conv=fsync 2>&1; echo RO-WRITE-RC=$?",
        "dd if=/dev/urandom of=/dev/vdb bs=4096 count=64 oflag=direct conv=fsync 2>/dev/null; echo SCRATCH-WRITE-RC=$?",
        "echo SCRATCH-SUM1=$(dd if=/dev/vdb bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)",
        "blkdiscard -o 0 -l 65536 /dev/vdb; echo DISCARD-RC=$?",
        "echo ZERO-SUM=$(dd if=/dev/vdb bs=4096 count=16 iflag=direct 2>/dev/null | md5sum)",
        "sync; echo FLUSH-RC=$?",
        "echo RNG-BYTES=$(head -c 64 /dev/hwrng | wc -c)",
        "echo RNG-CURRENT=$(cat /sys/class/misc/hw_random/rng_current)",
        "grep -E 'virtio|MSI' /proc/interrupts | sed 's/^/IRQ: /'",
        "poweroff -f",
    ]
    .join("; ");
    s += &vm_shell(
        "blk-shell",
        &commands,
        &format!(
            "--kernel bzImage --initrd initramfs.cpio.gz --cmdline {} --memory 256M \
             --disk path=ro.img,readonly=on,id=ro-disk --disk path=scratch.img --rng",
            sh_quote(&format!("{INITRD_CMDLINE} guest.exit=shell"))
        ),
    );
    s += "echo \"RO-IMAGE-AFTER=$(head -c 20 ro.img)\"\n";
    s += &durability_script();
    // Bad input: each fails before any guest runs.
    s += &vm(
        "bad-missing",
        "--kernel bzImage --disk path=/nonexistent/disk.img",
    );
    s += &vm("bad-directory", "--kernel bzImage --disk path=/scenario");
    s += &vm("bad-syntax", "--kernel bzImage --disk /scenario/ro.img");
    s += &vm(
        "bad-key",
        "--kernel bzImage --disk path=ro.img,readonly=maybe",
    );
    s += &vm(
        "bad-dup-id",
        "--kernel bzImage --disk path=ro.img,id=x --disk path=scratch.img,id=x",
    );
    s
}

fn line_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.find(key).map(|p| &l[p + key.len()..]))
        // The shell echoes the typed command line: skip its `$(…)`/`$?` forms.
        .find(|v| !v.starts_with('$'))
        .map(str::trim)
}

fn assert_device_bound(boot: &Boot, device_id: &str, driver: &str) {
    let report = boot.report();
    assert!(
        report
            .virtio
            .iter()
            .any(|d| d.device_id == device_id && d.driver == driver),
        "{}: no {driver} on device {device_id}: {:?}\nconsole:\n{}",
        boot.name,
        report.virtio,
        boot.console
    );
}

/// Takes the image between the markers, decodes it and reads `/file` with debugfs.
fn file_in_returned_image(run: &TestBedRun, dir: &Path) -> String {
    let out = &run.output;
    let begin = out.find("DATA-IMAGE-BEGIN").expect("no DATA-IMAGE-BEGIN");
    let end = out.find("DATA-IMAGE-END").expect("no DATA-IMAGE-END");
    let b64: String = out[begin + "DATA-IMAGE-BEGIN".len()..end]
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    let gz = dir.join("returned.ext4.gz");
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&gz).expect("create gz"))
        .spawn()
        .expect("run base64");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b64.as_bytes())
        .expect("feed base64");
    assert!(child.wait().expect("base64").success(), "base64 -d failed");
    let img = dir.join("returned.ext4");
    let gunzip = Command::new("gzip")
        .args(["-d", "-c"])
        .arg(&gz)
        .output()
        .expect("run gzip");
    assert!(gunzip.status.success(), "gunzip: {gunzip:?}");
    std::fs::write(&img, gunzip.stdout).expect("write image");
    let cat = Command::new("debugfs")
        .arg("-R")
        .arg("cat /file")
        .arg(&img)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&cat.stdout).into_owned()
}

#[test]
fn testbed_virtio_blk_root_readonly_durability_rng_and_bad_input() {
    let dir = scratch_dir();
    let run = TestBed::new("virtio-blk")
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .guest_file("rootfs-busybox.ext4", "root.ext4")
        .file(ro_image(&dir), "ro.img")
        .file(data_image(&dir), "data.ext4")
        .file(scratch_image(&dir), "scratch.img")
        .scenario_with_prelude(&scenario())
        .timeout(Duration::from_secs(900))
        .run();
    println!(
        "virtio-blk: {} (attempts {})",
        run.result_line().unwrap_or("no NESTED-RESULT"),
        run.attempts
    );
    for b in run.boots() {
        println!("  {}: rc={:?} {:?}s in L1", b.name, b.rc, b.seconds);
    }

    // Root disk boot: both disks and the entropy device bound, MSI-X in use.
    let root = run.boot("blk-root");
    assert_eq!(root.rc, Some(0), "blk-root console:\n{}", root.console);
    let report = root.report();
    assert!(report.ready, "blk-root: no GUEST-READY:\n{}", root.console);
    assert!(
        report.get("root").is_some_and(|r| r.contains("ext4")),
        "blk-root: root is {:?}\n{}",
        report.get("root"),
        root.console
    );
    assert_device_bound(&root, "0x0002", "virtio_blk");
    assert_device_bound(&root, "0x0004", "virtio_rng");
    assert_eq!(report.virtio.len(), 3, "{:?}", report.virtio);
    let msi: u32 = report
        .get("msi-irqs")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(msi >= 6, "blk-root: {msi} MSI interrupts for 3 devices");

    // Read-only disk and scratch disk from the shell.
    let shell = run.boot("blk-shell");
    let c = &shell.console;
    assert!(
        run.output.contains("KTEST-SHELL blk-shell up=1"),
        "shell never came up:\n{c}"
    );
    assert_eq!(shell.rc, Some(0), "blk-shell console:\n{c}");
    assert_eq!(line_value(c, "RO-FLAG="), Some("1"), "{c}");
    assert_eq!(line_value(c, "RO-SERIAL="), Some("ro-disk"), "{c}");
    assert_eq!(line_value(c, "RO-HEAD="), Some(RO_MAGIC), "{c}");
    assert_ne!(
        line_value(c, "RO-WRITE-RC="),
        Some("0"),
        "write to RO disk: {c}"
    );
    assert_eq!(line_value(c, "SCRATCH-WRITE-RC="), Some("0"), "{c}");
    assert_eq!(line_value(c, "DISCARD-RC="), Some("0"), "{c}");
    assert_eq!(line_value(c, "FLUSH-RC="), Some("0"), "{c}");
    // 64 KiB of zeros after the discard.
    assert!(
        line_value(c, "ZERO-SUM=")
            .is_some_and(|s| s.starts_with("fcd6bcb56c1689fcef28b57c22475bad")),
        "discarded range is not zero: {c}"
    );
    assert_eq!(line_value(c, "RNG-BYTES="), Some("64"), "{c}");
    assert!(
        line_value(c, "RNG-CURRENT=").is_some_and(|s| s.starts_with("virtio_rng")),
        "{c}"
    );
    assert_eq!(
        line_value(&run.output, "RO-IMAGE-AFTER="),
        Some(RO_MAGIC),
        "read-only image changed"
    );

    // Durability after SIGKILL.
    let dur = run.boot("durability");
    assert_eq!(
        line_value(&run.output, "DURABILITY-PHASE="),
        Some("2"),
        "guest never synced; console:\n{}",
        dur.console
    );
    let content = file_in_returned_image(&run, &dir);
    assert_eq!(content.trim(), DURABLE_TEXT, "debugfs cat /file");

    // Bad input: exit code 1 and one line naming the problem.
    for (name, needle) in [
        (
            "bad-missing",
            "cannot open disk image /nonexistent/disk.img",
        ),
        ("bad-directory", "cannot open disk image /scenario"),
        ("bad-syntax", "--disk: expected KEY=VALUE"),
        ("bad-key", "readonly must be on or off"),
        ("bad-dup-id", "used by two disks"),
    ] {
        let b = run.boot(name);
        assert_eq!(b.rc, Some(1), "{name}: {}", b.console);
        let lines: Vec<&str> = b
            .console
            .lines()
            .map(str::trim)
            // L1's own kernel messages share the console.
            .filter(|l| !l.is_empty() && !l.starts_with('['))
            .collect();
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(lines[0].contains(needle), "{name}: {lines:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
