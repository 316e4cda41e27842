//! Container images in the storage pool: a root filesystem directory copied in (`cp -a`) or
//! a tarball unpacked (`tar`, any compression it recognises) into `images/NAME/rootfs`. The
//! image is the read-only lower layer of every container made from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use api::daemon::{Image, ImportImage, InstanceKind};

use crate::db::now;
use crate::error::{DaemonError, Result};

fn run(cmd: &mut Command, what: &'static str, dest: &Path) -> Result<()> {
    let out = cmd.output().map_err(|e| DaemonError::io(what, dest, e))?;
    if !out.status.success() {
        return Err(DaemonError::io(
            what,
            dest,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// Checks the request's source: an absolute path to a directory or a regular file, and not
/// a directory holding the daemon's state (`/`, say), which would be copied into itself.
pub fn source(req: &ImportImage, state_dir: &Path) -> Result<PathBuf> {
    let Some(path) = req.rootfs.as_deref() else {
        return Err(DaemonError::BadRequest(
            "a container image needs rootfs".into(),
        ));
    };
    if !req.kernel.is_empty() || req.initrd.is_some() || req.disk.is_some() {
        return Err(DaemonError::BadRequest(
            "give either rootfs (a container image) or kernel/initrd/disk (a VM image), not both"
                .into(),
        ));
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(DaemonError::BadRequest(format!(
            "rootfs path {path:?} must be absolute"
        )));
    }
    if let (Ok(src), Ok(state)) = (p.canonicalize(), state_dir.canonicalize()) {
        if state.starts_with(&src) {
            return Err(DaemonError::BadRequest(format!(
                "rootfs {path:?} contains the daemon's state directory; give the root \
                 filesystem's own directory"
            )));
        }
    }
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() || m.is_file() => Ok(p),
        _ => Err(DaemonError::BadRequest(format!(
            "rootfs {path:?} is not a directory or a tarball"
        ))),
    }
}

/// Fills `tmp` (the image directory being built) from `src` and describes the image that
/// will live at `dir`.
pub fn build(name: &str, src: &Path, tmp: &Path, dir: &Path) -> Result<Image> {
    let rootfs = tmp.join("rootfs");
    if src.is_dir() {
        run(
            Command::new("cp").arg("-a").arg("--").arg(src).arg(&rootfs),
            "copy a root filesystem to",
            &rootfs,
        )?;
    } else {
        std::fs::create_dir_all(&rootfs).map_err(|e| DaemonError::io("create", &rootfs, e))?;
        run(
            Command::new("tar")
                .arg("-xf")
                .arg(src)
                .arg("-C")
                .arg(&rootfs)
                .arg("--numeric-owner"),
            "unpack a root filesystem into",
            &rootfs,
        )?;
    }
    if !rootfs.join("bin").exists() && !rootfs.join("usr/bin").exists() {
        return Err(DaemonError::BadRequest(format!(
            "{} does not look like a root filesystem (no bin/ or usr/bin/)",
            src.display()
        )));
    }
    Ok(Image {
        name: name.to_string(),
        kind: InstanceKind::Container,
        kernel: String::new(),
        rootfs: Some(dir.join("rootfs").display().to_string()),
        initrd: None,
        disk: None,
        cmdline: String::new(),
        size_bytes: du(&rootfs),
        created_at: now(),
    })
}

/// Apparent size of a tree in bytes (`du -sb`), 0 if unknown.
fn du(p: &Path) -> u64 {
    Command::new("du")
        .arg("-sb")
        .arg(p)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(rootfs: &str) -> ImportImage {
        ImportImage {
            name: "i".into(),
            kernel: String::new(),
            rootfs: Some(rootfs.into()),
            initrd: None,
            disk: None,
            cmdline: None,
        }
    }

    #[test]
    fn sources_are_checked_before_anything_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let e = |r: &str| source(&req(r), &state).unwrap_err().line();
        assert!(e("/").contains("state directory"), "{}", e("/"));
        assert!(e(&dir.path().display().to_string()).contains("state directory"));
        assert!(e("relative/dir").contains("absolute"));
        assert!(e("/nonexistent-kapsel-rootfs").contains("not a directory"));
        let mut both = req("/tmp");
        both.kernel = "/k".into();
        assert!(source(&both, &state)
            .unwrap_err()
            .line()
            .contains("not both"));
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(
            source(&req(&root.display().to_string()), &state).unwrap(),
            root
        );
    }
}
