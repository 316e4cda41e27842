//! Where things are: the repository and the guest artifacts.

use crate::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The root of the kapsel repository (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The guest directory (bzImage, vmlinux, initramfs-busybox.cpio.gz, rootfs-busybox.ext4,
/// host/bzImage). `$KAPSEL_GUEST_DIR` wins; otherwise `scripts/guest-artifacts.sh` runs once
/// per process (it may build the guests, which takes a while the first time).
///
/// # Panics
/// When the artifacts cannot be found or built: a test that needs them must fail loudly.
pub fn guest_dir() -> PathBuf {
    try_guest_dir().unwrap_or_else(|e| panic!("guest artifacts unavailable: {e}"))
}

/// [`guest_dir`] without the panic.
pub fn try_guest_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| find_guest_dir().map_err(|e| error_chain(&e)))
        .clone()
        .map_err(|msg| Error::Failed {
            program: "scripts/guest-artifacts.sh".into(),
            status: "earlier in this process".into(),
            output: msg,
        })
}

fn find_guest_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("KAPSEL_GUEST_DIR") {
        return Ok(PathBuf::from(dir));
    }
    run_guest_artifacts(&[])
}

/// The Debian root image `rootfs-debian.ext4` (bookworm minbase + fio + iperf3, init
/// `guests/linux/guest-init.sh`). `$KAPSEL_DEBIAN_IMAGE` wins; otherwise
/// `scripts/guest-artifacts.sh --debian-image` runs once per process (it builds the image
/// with debootstrap the first time, a few minutes).
///
/// # Panics
/// When the image cannot be found or built: a test that needs it must fail loudly.
pub fn debian_image() -> PathBuf {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("KAPSEL_DEBIAN_IMAGE") {
                return Ok(PathBuf::from(path));
            }
            run_guest_artifacts(&["--debian-image"]).map_err(|e| error_chain(&e))
        })
        .clone()
        .unwrap_or_else(|e| panic!("Debian guest image unavailable: {e}"))
}

/// Runs `scripts/guest-artifacts.sh ARGS`; its last stdout line is the answer.
fn run_guest_artifacts(args: &[&str]) -> Result<PathBuf, Error> {
    let script = repo_root().join("scripts/guest-artifacts.sh");
    let out = Command::new(&script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| Error::Spawn {
            program: script.display().to_string(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or("").trim();
    if !out.status.success() || dir.is_empty() {
        return Err(Error::Failed {
            program: script.display().to_string(),
            status: out.status.to_string(),
            output: stdout.into_owned(),
        });
    }
    Ok(PathBuf::from(dir))
}

/// An error with its sources, one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_holds_the_workspace_manifest() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("scripts/testbed.sh").is_file());
    }

    #[test]
    fn error_chain_joins_sources() {
        let e = Error::io("/x", std::io::Error::other("boom"));
        assert_eq!(error_chain(&e), "/x: boom");
    }
}
