//! The test bed and the guest-artifact script on their own, without kapsel: if these fail,
//! every Linux end-to-end test fails for reasons that are not kapsel's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use test_infra::{guest_dir, repo_root, TestBed};

#[test]
fn guest_artifacts_are_complete() {
    let dir = guest_dir();
    for f in [
        "bzImage",
        "vmlinux",
        "initramfs-busybox.cpio.gz",
        "rootfs-busybox.ext4",
        "host/bzImage",
    ] {
        let p = dir.join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} missing or empty", p.display());
    }
}

/// `../shared/guest` is used as is (nothing built) when its configs equal the repo's.
#[test]
fn guest_artifacts_prefer_a_matching_shared_dir() {
    let root = repo_root();
    let shared = root.join("../shared/guest");
    let same = |a: &Path, b: &Path| {
        std::fs::read(a)
            .ok()
            .is_some_and(|x| std::fs::read(b).ok() == Some(x))
    };
    if !(same(
        &shared.join("kernel.config"),
        &root.join("guests/linux/guest.config"),
    ) && same(
        &shared.join("host/kernel.config"),
        &root.join("guests/linux/host.config"),
    )) {
        eprintln!("../shared/guest absent or different: the script builds into the cache (covered by guest_artifacts_are_complete)");
        return;
    }
    let out = Command::new(root.join("scripts/guest-artifacts.sh"))
        .env_remove("KAPSEL_GUEST_SOURCE")
        .env_remove("KAPSEL_SHARED_GUEST")
        .output()
        .expect("run guest-artifacts.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        Path::new(&printed).canonicalize().ok(),
        shared.canonicalize().ok(),
        "printed {printed}"
    );
    assert!(
        out.stderr.is_empty(),
        "quiet when nothing to do: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A shared dir whose config differs is not used.
#[test]
fn guest_artifacts_reject_a_shared_dir_with_another_config() {
    let root = repo_root();
    let fake = std::env::temp_dir().join(format!("kapsel-fake-shared-{}", std::process::id()));
    std::fs::create_dir_all(fake.join("host")).expect("mkdir");
    std::fs::write(fake.join("kernel.config"), "CONFIG_OTHER=y\n").expect("write");
    // an unwritable cache dir makes the fallback build fail at once instead of building
    let out = Command::new(root.join("scripts/guest-artifacts.sh"))
        .env("KAPSEL_SHARED_GUEST", &fake)
        .env("KAPSEL_CACHE", "/proc/kapsel-no-such-dir")
        .output()
        .expect("run guest-artifacts.sh");
    let _ = std::fs::remove_dir_all(&fake);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no directory printed");
    assert!(
        stderr.contains("differs from guests/linux/guest.config"),
        "{stderr}"
    );
}

#[test]
fn testbed_rejects_a_missing_scenario_without_booting() {
    let out = Command::new(repo_root().join("scripts/testbed.sh"))
        .args(["-s", "/nonexistent/scenario.sh"])
        .output()
        .expect("run testbed.sh");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-s SCRIPT missing"));
}

/// L1 boots, has /dev/kvm, gets its files, and the scenario's exit code comes back.
#[test]
fn testbed_l1_has_kvm_and_returns_the_scenario_code() {
    let marker = std::env::temp_dir().join(format!("kapsel-marker-{}", std::process::id()));
    std::fs::write(&marker, "hello-from-host\n").expect("write marker");
    let run = TestBed::new("l1-kvm")
        .file(&marker, "data/marker.txt")
        .scenario(
            "[ -c /dev/kvm ] || exit 10\n\
             echo \"L1-CPUS=$(grep -c ^processor /proc/cpuinfo)\"\n\
             cat data/marker.txt\n\
             exit 7\n",
        )
        .cpus(2)
        .memory("1G")
        .timeout(Duration::from_secs(180))
        .run();
    let _ = std::fs::remove_file(&marker);
    assert_eq!(run.code, 7, "{}", run.tail(40));
    assert!(run.output.contains("L1-CPUS=2"));
    assert!(run.output.contains("hello-from-host"));
    let result = run.result_line().expect("NESTED-RESULT line");
    assert!(result.starts_with("NESTED-RESULT: rc=7 "), "{result}");
    println!("{result} (attempts {})", run.attempts);
}
