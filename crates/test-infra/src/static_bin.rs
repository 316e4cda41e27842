//! The statically linked `kapsel` binary copied into the test bed's L1.

use crate::paths::{error_chain, repo_root};
use crate::Error;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// A static `kapsel` (runs in L1's busybox userspace without libraries).
///
/// `$KAPSEL_STATIC_BIN` wins (`scripts/test.sh` builds it once and sets it). Otherwise it is
/// built once with `cargo build --release` into `<repo>/target/static`, a target dir of its own
/// so this nested cargo never waits on the lock of the `cargo test` that runs us; a file lock
/// there makes parallel test processes build it only once.
///
/// # Panics
/// When the build fails: the test must fail loudly.
pub fn kapsel_static_bin() -> PathBuf {
    try_kapsel_static_bin().unwrap_or_else(|e| panic!("static kapsel unavailable: {e}"))
}

/// [`kapsel_static_bin`] without the panic.
pub fn try_kapsel_static_bin() -> Result<PathBuf, Error> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build().map_err(|e| error_chain(&e)))
        .clone()
        .map_err(|msg| Error::Failed {
            program: "cargo build (static kapsel)".into(),
            status: "earlier in this process".into(),
            output: msg,
        })
}

fn find_or_build() -> Result<PathBuf, Error> {
    if let Some(bin) = std::env::var_os("KAPSEL_STATIC_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(Error::io(
                bin,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "$KAPSEL_STATIC_BIN names no file",
                ),
            ));
        }
        return Ok(bin);
    }
    build()
}

fn build() -> Result<PathBuf, Error> {
    let root = repo_root();
    let target_dir = root.join("target/static");
    std::fs::create_dir_all(&target_dir).map_err(|e| Error::io(&target_dir, e))?;
    let lock_path = target_dir.join(".build.lock");
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(&root)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .args(["build", "--release", "--target", TARGET, "-p", "kapsel"])
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .map_err(|source| Error::Spawn {
            program: "cargo build".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            program: "cargo build --release (static kapsel)".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(target_dir.join(TARGET).join("release/kapsel"))
}
