//! Fast tests on /dev/kvm: `kapsel run` boots the no_std test guest (`guests/test-guest`,
//! built by `scripts/build-test-guest.sh`) and the guest reports what it sees as
//! `fact: key=value` lines, ending with `TEST-PASS NAME` or `TEST-FAIL NAME: reason`.
//!
//! Each boot takes milliseconds, so every contract point gets its own boot: both entry
//! paths, vCPU counts against the MP table, MADT and CPUID, memory sizes against the e820
//! map, ACPI checksums, interrupts, the RTC, unmapped I/O, exit codes, and bad CLI input.
//! A missing /dev/kvm fails these tests: they are the VMM's core checks, never skipped.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A run is killed after this long (a healthy one takes well under a second).
const TIMEOUT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The legacy gap [0x9fc00, 1 MiB) is not RAM: the e820 RAM total is the size minus this.
const LEGACY_GAP: u64 = 0x10_0000 - 0x9_fc00;

use test_infra::{require_kvm, test_guest, TestGuestEntry as Entry};

fn entry_name(entry: Entry) -> &'static str {
    match entry {
        Entry::Pvh => "pvh",
        Entry::Elf64 => "elf64",
    }
}

fn guest(entry: Entry) -> PathBuf {
    test_guest(entry)
}

// ---------------------------------------------------------------------------------------
// Harness: guest ELFs, running kapsel with a timeout, reading facts.

#[derive(Debug)]
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `kapsel ARGS` with stdin closed, killing it after [`TIMEOUT`].
fn kapsel(args: &[&str]) -> Run {
    let what = format!("kapsel {}", shorten(&args.join(" ")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for kapsel") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let run = Run {
        what,
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "{} timed out after {TIMEOUT:?}\n{}",
        run.what,
        run.dump()
    );
    run
}

fn shorten(s: &str) -> String {
    if s.len() > 160 {
        format!("{}… ({} bytes)", &s[..120], s.len())
    } else {
        s.to_string()
    }
}

/// Boots the test guest with `test=NAME`.
fn boot(entry: Entry, test: &str, cpus: u32, memory: &str) -> Run {
    require_kvm();
    let kernel = guest(entry);
    let kernel = kernel.to_str().expect("utf-8 path");
    let cmdline = format!("test={test}");
    let cpus = cpus.to_string();
    kapsel(&[
        "run",
        "--kernel",
        kernel,
        "--cmdline",
        &cmdline,
        "--cpus",
        &cpus,
        "--memory",
        memory,
    ])
}

impl Run {
    fn dump(&self) -> String {
        format!(
            "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Every `key=value` of every `fact:` line, in order (a line may hold several).
    fn facts(&self) -> Vec<(&str, &str)> {
        self.stdout
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("fact: "))
            .flat_map(|l| l.split_whitespace())
            .filter_map(|kv| kv.split_once('='))
            .collect()
    }

    /// All values of `key` (e.g. every `e820` entry).
    fn all(&self, key: &str) -> Vec<&str> {
        self.facts()
            .into_iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect()
    }

    /// The single value of `key`; panics with the whole output when it is missing.
    fn fact(&self, key: &str) -> &str {
        match self.all(key).as_slice() {
            [v] => v,
            other => panic!(
                "{}: expected one `fact: {key}=`, got {other:?}\n{}",
                self.what,
                self.dump()
            ),
        }
    }

    fn num(&self, key: &str) -> u64 {
        parse_num(self.fact(key))
            .unwrap_or_else(|| panic!("{}: fact {key} is not a number\n{}", self.what, self.dump()))
    }

    /// Exit code 0 and `TEST-PASS NAME` on the console.
    fn assert_pass(&self, test: &str) {
        let pass = format!("TEST-PASS {test}");
        assert!(
            self.stdout.lines().any(|l| l.trim_end() == pass),
            "{}: no `{pass}`\n{}",
            self.what,
            self.dump()
        );
        assert_eq!(
            self.code,
            Some(0),
            "{}: exit code\n{}",
            self.what,
            self.dump()
        );
    }
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// One `fact: e820=START-END TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct E820 {
    start: u64,
    end: u64,
    kind: u32,
}

/// The e820 facts (two words per entry: `START-END` and `TYPE`).
fn e820(run: &Run) -> Vec<E820> {
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("fact: e820="))
        .collect();
    lines
        .iter()
        .map(|l| {
            let parsed = (|| {
                let (range, kind) = l.split_once(' ')?;
                let (s, e) = range.split_once('-')?;
                Some(E820 {
                    start: parse_num(s)?,
                    end: parse_num(e)?,
                    kind: kind.parse().ok()?,
                })
            })();
            parsed.unwrap_or_else(|| panic!("bad e820 fact {l:?}\n{}", run.dump()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Entry paths.

#[test]
fn pvh_entry_boots_and_resets_with_exit_0() {
    let run = boot(Entry::Pvh, "hello", 1, "128M");
    assert!(run.stdout.contains("TEST-GUEST-READY"), "{}", run.dump());
    assert!(
        run.stdout.contains("test-guest: entry=pvh"),
        "{}",
        run.dump()
    );
    run.assert_pass("hello");
}

#[test]
fn elf64_entry_boots_and_resets_with_exit_0() {
    let run = boot(Entry::Elf64, "hello", 1, "128M");
    assert!(run.stdout.contains("TEST-GUEST-READY"), "{}", run.dump());
    assert!(
        run.stdout.contains("test-guest: entry=elf64"),
        "{}",
        run.dump()
    );
    run.assert_pass("hello");
}

#[test]
fn both_entries_see_the_command_line_and_rsdp() {
    for entry in [Entry::Pvh, Entry::Elf64] {
        let run = boot(entry, "bootinfo", 1, "128M");
        run.assert_pass("bootinfo");
        assert_eq!(run.fact("entry"), entry_name(entry));
        assert_eq!(run.fact("cmdline"), "test=bootinfo");
        assert_ne!(run.num("rsdp"), 0, "{:?}: no RSDP in the boot info", entry);
    }
}

// ---------------------------------------------------------------------------------------
// Memory map.

/// The e820 map for `mem` bytes: RAM totals the size minus the legacy gap, low RAM ends at
/// min(mem, 3 GiB), the rest starts at 4 GiB, nothing in the PCI hole, sorted, disjoint.
fn check_memory(entry: Entry, arg: &str, mem: u64) {
    let run = boot(entry, "bootinfo", 1, arg);
    run.assert_pass("bootinfo");
    let map = e820(&run);
    assert_eq!(run.num("e820_entries"), map.len() as u64, "{}", run.dump());
    let ram: Vec<E820> = map.iter().copied().filter(|e| e.kind == 1).collect();
    let total: u64 = ram.iter().map(|e| e.end - e.start).sum();
    assert_eq!(total, mem - LEGACY_GAP, "{arg}: RAM total\n{}", run.dump());
    assert_eq!(run.num("ram_bytes"), total);
    assert!(
        ram.iter().any(|e| e.start == 0 && e.end == 0x9_fc00),
        "{arg}: RAM at 0\n{}",
        run.dump()
    );
    let low_end = mem.min(3 * GIB);
    assert!(
        ram.iter().any(|e| e.start == MIB && e.end == low_end),
        "{arg}: RAM [1 MiB, {low_end:#x})\n{}",
        run.dump()
    );
    if mem > 3 * GIB {
        assert!(
            ram.iter()
                .any(|e| e.start == 4 * GIB && e.end == 4 * GIB + (mem - 3 * GIB)),
            "{arg}: RAM above 4 GiB\n{}",
            run.dump()
        );
    }
    for e in &ram {
        assert!(
            e.end <= 3 * GIB || e.start >= 4 * GIB,
            "{arg}: RAM in the PCI hole: {e:?}"
        );
    }
    for pair in map.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "{arg}: unsorted/overlapping {pair:?}"
        );
    }
    for (start, end) in [(0x9_fc00, 0xa_0000), (0xe_0000, 0x10_0000)] {
        assert!(
            map.iter()
                .any(|e| e.kind == 2 && e.start == start && e.end == end),
            "{arg}: reserved [{start:#x}, {end:#x}) missing\n{}",
            run.dump()
        );
    }
}

#[test]
fn memory_64m_e820() {
    check_memory(Entry::Pvh, "64M", 64 * MIB);
}

#[test]
fn memory_128m_e820_both_entries() {
    check_memory(Entry::Pvh, "128M", 128 * MIB);
    check_memory(Entry::Elf64, "128M", 128 * MIB);
}

#[test]
fn memory_1g_e820() {
    check_memory(Entry::Pvh, "1G", GIB);
}

#[test]
fn memory_at_the_3g_boundary_e820() {
    check_memory(Entry::Elf64, "3G", 3 * GIB);
    check_memory(Entry::Pvh, "3073M", 3 * GIB + MIB);
}

#[test]
fn memory_5g_e820_has_the_pci_hole_both_entries() {
    check_memory(Entry::Pvh, "5G", 5 * GIB);
    check_memory(Entry::Elf64, "5G", 5 * GIB);
}

// ---------------------------------------------------------------------------------------
// vCPU count: MP table, MADT and CPUID agree with --cpus.

fn check_cpus(n: u32) {
    let mp = boot(Entry::Pvh, "mptable", n, "128M");
    mp.assert_pass("mptable");
    assert_eq!(mp.num("mp_cpus"), u64::from(n), "{}", mp.dump());
    assert_eq!(mp.fact("mp_apic_ids_sequential"), "1");
    assert_eq!(mp.num("mp_ioapic"), 0xfec0_0000);
    assert!(mp.num("mp_floating_pointer") >= 0xf_0000, "{}", mp.dump());

    let acpi = boot(Entry::Pvh, "acpi", n, "128M");
    acpi.assert_pass("acpi");
    assert_eq!(acpi.num("madt_cpus"), u64::from(n), "{}", acpi.dump());

    let cpuid = boot(Entry::Elf64, "cpuid", n, "128M");
    cpuid.assert_pass("cpuid");
    assert_eq!(cpuid.num("cpuid_cpus"), u64::from(n), "{}", cpuid.dump());
    assert_eq!(cpuid.num("leaf1_cpus"), u64::from(n), "{}", cpuid.dump());
    assert_eq!(cpuid.num("apic_id"), 0, "the BSP runs the guest");
}

#[test]
fn cpus_1_agree_in_mptable_madt_cpuid() {
    check_cpus(1);
}

#[test]
fn cpus_2_agree_in_mptable_madt_cpuid() {
    check_cpus(2);
}

#[test]
fn cpus_4_agree_in_mptable_madt_cpuid() {
    check_cpus(4);
}

#[test]
fn cpus_32_agree_in_mptable_madt_cpuid() {
    check_cpus(32);
}

// ---------------------------------------------------------------------------------------
// ACPI, CPUID identity, interrupts, RTC, unmapped I/O.

#[test]
fn acpi_tables_have_valid_checksums() {
    for entry in [Entry::Pvh, Entry::Elf64] {
        let run = boot(entry, "acpi", 2, "256M");
        run.assert_pass("acpi");
        assert_eq!(run.fact("acpi_checksums"), "ok");
        assert_eq!(run.num("acpi_revision"), 2);
        assert_eq!(
            run.fact("rsdp_boot"),
            run.fact("rsdp_scan"),
            "{}",
            run.dump()
        );
        let tables: Vec<&str> = run.fact("acpi_tables").split(',').collect();
        for sig in ["FACP", "APIC", "DSDT"] {
            assert!(tables.contains(&sig), "{sig} missing from {tables:?}");
        }
        assert_eq!(run.fact("acpi_hw_reduced"), "1");
        assert_eq!(run.num("sleep_control"), 0x600);
        assert_eq!(run.num("madt_ioapic"), 0xfec0_0000);
        assert_eq!(run.num("madt_lapic"), 0xfee0_0000);
    }
}

#[test]
fn cpuid_shows_kvm_and_kvmclock() {
    let run = boot(Entry::Pvh, "cpuid", 1, "128M");
    run.assert_pass("cpuid");
    assert_eq!(run.fact("hypervisor"), "KVMKVMKVM");
    assert_eq!(run.fact("kvmclock"), "1");
    assert_eq!(run.fact("hypervisor_bit"), "1");
    let vendor = run.fact("vendor");
    assert!(
        vendor == "GenuineIntel" || vendor == "AuthenticAMD",
        "vendor {vendor}"
    );
}

#[test]
fn interrupts_lapic_timer_and_pit_tick() {
    for (entry, cpus) in [(Entry::Pvh, 1), (Entry::Elf64, 2)] {
        let run = boot(entry, "interrupts", cpus, "128M");
        run.assert_pass("interrupts");
        assert!(run.num("lapic_ticks") > 0, "{}", run.dump());
        assert!(run.num("pit_ticks") > 0, "{}", run.dump());
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) to Unix seconds.
fn parse_rtc(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, mo, dd], [h, mi, se]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    Some(days_from_civil(*y, *mo, *dd) * 86_400 + h * 3600 + mi * 60 + se)
}

#[test]
fn rtc_parser_matches_known_dates() {
    assert_eq!(parse_rtc("1970-01-01T00:00:00"), Some(0));
    assert_eq!(parse_rtc("2000-03-01T00:00:00"), Some(951_868_800));
    assert_eq!(parse_rtc("2024-02-29T12:34:56"), Some(1_709_210_096));
    assert_eq!(parse_rtc("garbage"), None);
}

#[test]
fn rtc_matches_host_utc_within_5_minutes() {
    let run = boot(Entry::Pvh, "rtc", 1, "128M");
    run.assert_pass("rtc");
    let guest =
        parse_rtc(run.fact("rtc")).unwrap_or_else(|| panic!("bad rtc fact\n{}", run.dump()));
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let diff = (guest - host as i64).abs();
    assert!(
        diff <= 300,
        "guest RTC {} is {diff} s away from host UTC",
        run.fact("rtc")
    );
    assert_eq!(run.fact("rtc_24h"), "1");
}

#[test]
fn unmapped_pio_and_mmio_read_all_ones() {
    for entry in [Entry::Pvh, Entry::Elf64] {
        let run = boot(entry, "pio", 1, "128M");
        run.assert_pass("pio");
        assert_eq!(run.num("unmapped_pio"), 0xff);
        assert_eq!(run.num("unmapped_pio16"), 0xffff);
        assert_eq!(run.num("unmapped_pio32"), 0xffff_ffff);
        assert_eq!(run.num("unmapped_mmio"), 0xffff_ffff);
    }
}

// ---------------------------------------------------------------------------------------
// How the VM ends: exit codes.

#[test]
fn i8042_reset_exits_0() {
    let run = boot(Entry::Pvh, "reset", 1, "64M");
    run.assert_pass("reset");
    assert!(
        !run.stdout.contains("did not stop the VM"),
        "{}",
        run.dump()
    );
}

#[test]
fn acpi_poweroff_exits_0() {
    for entry in [Entry::Pvh, Entry::Elf64] {
        let run = boot(entry, "poweroff", 1, "64M");
        run.assert_pass("poweroff");
        assert!(!run.stdout.contains("TEST-FAIL"), "{}", run.dump());
    }
}

#[test]
fn triple_fault_exits_3_with_one_line_reason() {
    let run = boot(Entry::Pvh, "triplefault", 1, "64M");
    assert_eq!(run.code, Some(3), "{}", run.dump());
    assert_one_line_error(&run);
}

#[test]
fn unknown_guest_test_reports_fail_but_still_resets() {
    let run = boot(Entry::Elf64, "no-such-test", 1, "64M");
    assert!(
        run.stdout.contains("TEST-FAIL no-such-test: unknown test"),
        "{}",
        run.dump()
    );
    assert_eq!(run.code, Some(0), "{}", run.dump());
}

// ---------------------------------------------------------------------------------------
// Bad input: one clear line on stderr, a non-zero exit, no panic.

fn assert_one_line_error(run: &Run) {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{}: want exactly one stderr line\n{}",
        run.what,
        run.dump()
    );
    let lower = run.stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "{}: panic on stderr\n{}",
        run.what,
        run.dump()
    );
}

#[test]
fn bad_cli_input_fails_with_one_clear_line() {
    require_kvm();
    let kernel = guest(Entry::Pvh);
    let kernel = kernel.to_str().expect("utf-8 path");
    let big_initrd = std::env::temp_dir().join(format!("kapsel-big-initrd-{}", std::process::id()));
    let f = std::fs::File::create(&big_initrd).expect("create initrd");
    f.set_len(96 * MIB).expect("size sparse initrd");
    drop(f);
    let initrd = big_initrd.to_str().expect("utf-8 path");
    let long_cmdline = "a".repeat(5000);

    // (arguments after `run`, words of which the error line must contain at least one)
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["--kernel", "/nonexistent/kernel"],
            &["/nonexistent/kernel"],
        ),
        (
            vec!["--kernel", "/etc/hostname"],
            &["/etc/hostname", "kernel"],
        ),
        (vec!["--kernel", kernel, "--cpus", "0"], &["cpu"]),
        (vec!["--kernel", kernel, "--cpus", "100000"], &["cpu"]),
        (vec!["--kernel", kernel, "--memory", "1M"], &["memory"]),
        (vec!["--kernel", kernel, "--memory", "99999G"], &["memory"]),
        (vec!["--kernel", kernel, "--memory", "12QB"], &["12QB"]),
        (
            vec!["--kernel", kernel, "--cmdline", &long_cmdline],
            &["command line", "cmdline"],
        ),
        (
            vec!["--kernel", kernel, "--memory", "64M", "--initrd", initrd],
            &["initrd"],
        ),
    ];
    let mut failures = Vec::new();
    for (args, words) in &cases {
        let mut full = vec!["run"];
        full.extend(args.iter().copied());
        let run = kapsel(&full);
        let outcome = std::panic::catch_unwind(|| {
            assert!(
                matches!(run.code, Some(c) if c != 0),
                "{}: exit code\n{}",
                run.what,
                run.dump()
            );
            assert_one_line_error(&run);
            let lower = run.stderr.to_lowercase();
            assert!(
                words.iter().any(|w| lower.contains(&w.to_lowercase())),
                "{}: stderr names none of {words:?}\n{}",
                run.what,
                run.dump()
            );
        });
        if outcome.is_err() {
            failures.push(run.what.clone());
        }
    }
    let _ = std::fs::remove_file(&big_initrd);
    assert!(
        failures.is_empty(),
        "bad-input cases that failed: {failures:#?}"
    );
}

#[test]
fn memory_backing_prealloc_and_lock_boot_and_hugepages_without_a_pool_is_one_line() {
    require_kvm();
    let kernel = guest(Entry::Pvh);
    let kernel = kernel.to_str().expect("utf-8 path");
    let args = |backing: &'static str| {
        [
            "run",
            "--kernel",
            kernel,
            "--cmdline",
            "test=hello",
            "--memory",
            "64M",
            "--memory-backing",
            backing,
        ]
    };
    for backing in ["prealloc", "lock", "prealloc,lock"] {
        let run = kapsel(&args(backing));
        run.assert_pass("hello");
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free_pages = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if free_pages < 32 {
        // too few reserved 2 MiB pages for 64 MiB: refused before the guest starts
        let run = kapsel(&args("hugepages"));
        assert_eq!(run.code, Some(1), "{}", run.dump());
        let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "{}", run.dump());
        assert!(
            lines[0].starts_with("kapsel: ") && lines[0].contains("nr_hugepages"),
            "{}",
            run.dump()
        );
    }
    let run = kapsel(&args("prealloc,huge"));
    assert_eq!(run.code, Some(2), "usage error: {}", run.dump());
    assert!(run.stderr.contains("'huge'"), "{}", run.dump());
}
