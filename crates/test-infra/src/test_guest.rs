//! The no_std test guest (`guests/test-guest`), built once per test process when its ELF is
//! missing or older than its sources, and the `/dev/kvm` check for tests that run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::repo_root;

/// Which of the two test-guest ELFs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestGuestEntry {
    /// With the PVH note: 32-bit PVH entry.
    Pvh,
    /// Without it: the 64-bit Linux boot protocol entry.
    Elf64,
}

/// Newest modification time below `dir` (skipping `target`).
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        let t = if p.is_dir() {
            newest_source(&p)
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH)
        };
        newest = newest.max(t);
    }
    newest
}

/// The test guest ELF for `entry`, (re)built once per process with
/// `scripts/build-test-guest.sh` when missing or stale. Panics when the build fails.
pub fn test_guest(entry: TestGuestEntry) -> PathBuf {
    static GUESTS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    let [pvh, elf64] = GUESTS.get_or_init(|| {
        let root = repo_root();
        let target = std::env::var_os("TEST_GUEST_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/test-guest"));
        let dir = target.join("x86_64-unknown-linux-gnu/release");
        let bins = [dir.join("test-guest-pvh"), dir.join("test-guest-elf64")];
        let sources = newest_source(&root.join("guests/test-guest"))
            .max(newest_source(&root.join("scripts/build-test-guest.sh")));
        let stale = bins.iter().any(|b| {
            std::fs::metadata(b)
                .and_then(|m| m.modified())
                .map_or(true, |t| t < sources)
        });
        if stale {
            let out = Command::new(root.join("scripts/build-test-guest.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/build-test-guest.sh");
            assert!(
                out.status.success(),
                "scripts/build-test-guest.sh failed: {}",
                out.status
            );
        }
        for b in &bins {
            assert!(b.is_file(), "test guest {} was not built", b.display());
        }
        bins
    });
    match entry {
        TestGuestEntry::Pvh => pvh.clone(),
        TestGuestEntry::Elf64 => elf64.clone(),
    }
}

/// Fails loudly when /dev/kvm is unusable: tests that need it must not pass without it.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("/dev/kvm is required for these tests and cannot be opened: {e}");
    }
}
