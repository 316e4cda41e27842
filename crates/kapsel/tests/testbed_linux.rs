//! Real Linux guests (L2) booted by kapsel inside the nested test bed (L1 Linux with KVM on
//! QEMU TCG; see `scripts/testbed.sh`). Each L1 boot costs seconds, so every test batches
//! several L2 boots into one L1 run and then checks each boot's console.
//!
//! The guest (`guests/linux/guest-init.sh`) prints `GUEST-READY` and `guest: …` lines, then
//! ends the VM with `reboot -f` (default), `poweroff -f` (`guest.exit=poweroff`), or leaves a
//! shell on the console (`guest.exit=shell`). `quiet` keeps the serial log short: every byte
//! is an exit that TCG emulates twice over.

use std::time::Duration;
use test_infra::scenario::{sh_quote, Boot};
use test_infra::{TestBed, TestBedRun};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet";
/// Seconds one L2 boot may take inside L1 before the scenario kills kapsel.
const BOOT_TIMEOUT: u32 = 240;

/// A test bed with the static kapsel, both kernel formats and the initramfs.
fn linux_testbed(name: &str) -> TestBed {
    TestBed::new(name)
        .with_kapsel()
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
}

/// One `vm` line of a scenario: boot KERNEL with the initramfs.
fn vm(name: &str, kernel: &str, cpus: u32, memory: &str, extra: &str) -> String {
    format!(
        "vm {name} {BOOT_TIMEOUT} --kernel {kernel} --initrd initramfs.cpio.gz --cmdline {} --cpus {cpus} --memory {memory}\n",
        sh_quote(&format!("{CMDLINE}{extra}"))
    )
}

/// One `vm_shell` line: boot with a shell on the console and type COMMANDS into it.
fn vm_shell(name: &str, commands: &str) -> String {
    format!(
        "vm_shell {name} {BOOT_TIMEOUT} {} --kernel bzImage --initrd initramfs.cpio.gz --cmdline {} --cpus 1 --memory 256M\n",
        sh_quote(commands),
        sh_quote(&format!("{CMDLINE} guest.exit=shell"))
    )
}

fn print_timings(test: &str, run: &TestBedRun) {
    println!(
        "{test}: {} (attempts {})",
        run.result_line().unwrap_or("no NESTED-RESULT"),
        run.attempts
    );
    for b in run.boots() {
        println!("  {}: rc={:?} {:?}s in L1", b.name, b.rc, b.seconds);
    }
}

/// kapsel exited 0 after the guest reported itself.
fn assert_clean_exit(boot: &Boot) {
    assert_eq!(
        boot.rc,
        Some(0),
        "{}: kapsel exit code; console:\n{}",
        boot.name,
        boot.console
    );
    assert!(
        boot.report().ready,
        "{}: no GUEST-READY; console:\n{}",
        boot.name,
        boot.console
    );
}

/// The guest saw CPUS processors and roughly MIB of memory: MemTotal is below the RAM size
/// (kernel image, reserved ranges) but not by more than 10% + 16 MiB.
fn assert_sees(boot: &Boot, cpus: u32, mib: u64) {
    let report = boot.report();
    assert_eq!(
        report.cpus(),
        Some(cpus),
        "{}: cpus; console:\n{}",
        boot.name,
        boot.console
    );
    let kib = report
        .memtotal_kib()
        .unwrap_or_else(|| panic!("{}: no memtotal; console:\n{}", boot.name, boot.console));
    let requested = mib * 1024;
    let lowest = requested * 9 / 10 - 16 * 1024;
    assert!(
        (lowest..=requested).contains(&kib),
        "{}: MemTotal {kib} KiB for {mib} MiB of RAM (expected {lowest}..={requested})",
        boot.name
    );
}

/// bzImage and ELF vmlinux, each from the initramfs, with 1, 2 and 4 vCPUs; the guest ends
/// with `reboot -f` (default) or `poweroff -f`, and kapsel exits 0 either way.
#[test]
fn testbed_linux_boots_bzimage_and_vmlinux_with_1_2_4_vcpus() {
    let mut script = String::new();
    script += &vm("bz-1cpu", "bzImage", 1, "128M", "");
    script += &vm("bz-2cpu", "bzImage", 2, "256M", "");
    // Four L2 vCPUs on the test bed's two TCG-emulated L1 vCPUs sometimes break Linux's
    // cross-CPU code patching (an `int3:` oops from text_poke_bp, or a triple fault, during
    // SMP bring-up): a test-bed flake seen about once in five runs, never with 1 or 2 vCPUs.
    // The 4-vCPU boot therefore runs twice and one clean boot is required; a failed first
    // attempt is printed loudly.
    for name in ["bz-4cpu-poweroff", "bz-4cpu-poweroff-again"] {
        script += &vm(name, "bzImage", 4, "256M", " guest.exit=poweroff");
    }
    script += &vm("elf-2cpu", "vmlinux", 2, "256M", "");
    let run = linux_testbed("linux-vcpus")
        .guest_file("vmlinux", "vmlinux")
        .scenario_with_prelude(&script)
        .timeout(Duration::from_secs(600))
        .run();
    print_timings("boots_bzimage_and_vmlinux", &run);
    for (name, cpus, mib) in [
        ("bz-1cpu", 1, 128),
        ("bz-2cpu", 2, 256),
        ("elf-2cpu", 2, 256),
    ] {
        let boot = run.boot(name);
        assert_clean_exit(&boot);
        assert_sees(&boot, cpus, mib);
    }
    let attempts = [
        run.boot("bz-4cpu-poweroff"),
        run.boot("bz-4cpu-poweroff-again"),
    ];
    let clean = |b: &Boot| b.rc == Some(0) && b.report().ready;
    if !clean(&attempts[0]) {
        println!(
            "WARNING: first 4-vCPU boot failed (test-bed flake, see the comment above); console:\n{}",
            attempts[0].console
        );
    }
    let boot = attempts.iter().find(|b| clean(b)).unwrap_or_else(|| {
        panic!(
            "both 4-vCPU boots failed; consoles:\n{}\n---\n{}",
            attempts[0].console, attempts[1].console
        )
    });
    assert_sees(boot, 4, 256);
    assert_eq!(boot.report().get("exit"), Some("poweroff"));
}

/// 128 MiB, 1 GiB and 5 GiB (RAM above the 32-bit PCI hole); L1 gets 8 GiB for that.
#[test]
fn testbed_linux_memory_sizes_128m_1g_5g() {
    let mut script = String::new();
    script += &vm("mem-128m", "bzImage", 1, "128M", "");
    script += &vm("mem-1g", "bzImage", 1, "1G", "");
    script += &vm("mem-5g", "bzImage", 2, "5G", "");
    let run = linux_testbed("linux-memory")
        .memory("8G")
        .scenario_with_prelude(&script)
        .timeout(Duration::from_secs(600))
        .run();
    print_timings("memory_sizes", &run);
    for (name, cpus, mib) in [
        ("mem-128m", 1, 128),
        ("mem-1g", 1, 1024),
        ("mem-5g", 2, 5 * 1024),
    ] {
        let boot = run.boot(name);
        assert_clean_exit(&boot);
        assert_sees(&boot, cpus, mib);
    }
}

/// Commands piped into the guest's shell through kapsel's stdin run, and both
/// `poweroff -f` and `reboot -f` typed there end kapsel with exit 0; a reset by triple
/// fault (`reboot=t`) ends it with exit 3.
#[test]
fn testbed_linux_shell_on_stdin_and_ways_to_end() {
    let mut script = String::new();
    script += &vm_shell("shell-poweroff", "echo MARK-$((6*7)); poweroff -f");
    script += &vm_shell("shell-reboot", "echo REBOOT-$((20+3)); reboot -f");
    // reboot=t makes Linux reset by triple fault: kapsel's exit code 3
    script += &format!(
        "vm triple-fault {BOOT_TIMEOUT} --kernel bzImage --initrd initramfs.cpio.gz --cmdline {} --memory 256M\n",
        sh_quote(&CMDLINE.replace("reboot=k", "reboot=t"))
    );
    let run = linux_testbed("linux-shell")
        .scenario_with_prelude(&script)
        .timeout(Duration::from_secs(600))
        .run();
    print_timings("shell", &run);
    for (name, mark) in [("shell-poweroff", "MARK-42"), ("shell-reboot", "REBOOT-23")] {
        let boot = run.boot(name);
        assert!(
            run.output.contains(&format!("KTEST-SHELL {name} up=1")),
            "{name}: the guest shell never answered; console:\n{}",
            boot.console
        );
        assert!(
            boot.shows(mark),
            "{name}: no {mark}; console:\n{}",
            boot.console
        );
        assert_clean_exit(&boot);
    }
    let triple = run.boot("triple-fault");
    assert!(triple.report().ready, "console:\n{}", triple.console);
    assert_eq!(
        triple.rc,
        Some(3),
        "triple fault exit code; console:\n{}",
        triple.console
    );
}
