//! The static `vsock-tool` (guests/vsock-tool) for test-bed guests and L1: built once, and
//! packed as a cpio.gz archive to append to the busybox initramfs.

use std::path::{Path, PathBuf};
use std::process::Command;
use test_infra::repo_root;
use test_infra::scenario::sh_quote;

/// Builds the static vsock-tool once (its own cargo workspace).
pub fn vsock_tool() -> PathBuf {
    let root = repo_root();
    let target_dir = root.join("target/vsock-tool");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root.join("guests/vsock-tool"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .expect("run cargo for vsock-tool");
    assert!(status.success(), "building guests/vsock-tool failed");
    target_dir.join("x86_64-unknown-linux-gnu/release/vsock-tool")
}

/// A gzipped newc cpio archive holding `bin/vsock-tool`, to append to an initramfs.
pub fn tool_archive(tool: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kapsel-vsock-cpio-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tree/bin")).expect("mkdir");
    std::fs::copy(tool, dir.join("tree/bin/vsock-tool")).expect("copy tool");
    let out = dir.join("vsock-tool.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find bin | cpio -o -H newc --quiet | gzip -1 > {}",
            sh_quote(&dir.join("tree").to_string_lossy()),
            sh_quote(&out.to_string_lossy())
        ))
        .status()
        .expect("run cpio");
    assert!(status.success(), "cpio failed");
    out
}
