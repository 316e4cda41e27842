//! The storage pool: a directory under the state dir. Images are copied in once (sparsely, a
//! reflink where the filesystem can); an instance's root disk is a qcow2 overlay over its
//! image's disk (see `disks.rs`), so creating an instance copies nothing.

use std::path::{Path, PathBuf};

use api::daemon::{Image, ImportImage};

use crate::db::now;
use crate::error::{DaemonError, Result};
use crate::names::{check_name, MAX_NAME};
use crate::state::Daemon;

/// Copies `src` to `dst` sparsely: a reflink where the filesystem can share blocks, else a
/// copy that leaves all-zero 64 KiB blocks as holes; synced before it returns. Done here
/// rather than with `cp --sparse=always`, which busybox-only hosts lack.
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    let mut from = std::fs::File::open(src).map_err(|e| DaemonError::io("open", src, e))?;
    let mut to = std::fs::File::create(dst).map_err(|e| DaemonError::io("create", dst, e))?;
    let write_err = |e| DaemonError::io("copy to", dst, e);
    // SAFETY: FICLONE reads the source descriptor number passed by value; both files are open.
    let cloned = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0;
    if !cloned {
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = from
                .read(&mut buf)
                .map_err(|e| DaemonError::io("read", src, e))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().all(|&b| b == 0) {
                to.seek(SeekFrom::Current(n as i64)).map_err(write_err)?;
            } else {
                to.write_all(&buf[..n]).map_err(write_err)?;
            }
            len += n as u64;
        }
        to.set_len(len).map_err(write_err)?;
    }
    to.sync_all().map_err(write_err)
}

fn source(what: &str, path: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(DaemonError::BadRequest(format!(
            "{what} path {path:?} must be absolute"
        )));
    }
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        _ => Err(DaemonError::BadRequest(format!(
            "{what} {path:?} is not a readable file"
        ))),
    }
}

/// Imports an image: checks its files and copies them into the pool.
pub fn import(d: &Daemon, req: &ImportImage) -> Result<Image> {
    check_name("image", &req.name, MAX_NAME)?;
    let rootfs = req
        .rootfs
        .is_some()
        .then(|| crate::container::image::source(req, &d.config.state_dir))
        .transpose()?;
    if rootfs.is_none() && req.kernel.is_empty() {
        return Err(DaemonError::BadRequest(
            "an image needs kernel (a VM image) or rootfs (a container image)".into(),
        ));
    }
    let kernel = if rootfs.is_some() {
        PathBuf::new()
    } else {
        source("kernel", &req.kernel)?
    };
    let initrd = req
        .initrd
        .as_deref()
        .map(|p| source("initrd", p))
        .transpose()?;
    let disk = req.disk.as_deref().map(|p| source("disk", p)).transpose()?;
    let cmdline = req.cmdline.clone().unwrap_or_default();
    if cmdline.len() > crate::names::MAX_CMDLINE || cmdline.contains(['\0', '\n']) {
        return Err(DaemonError::BadRequest(
            "cmdline must be one short line".into(),
        ));
    }
    if d.db().image(&req.name).is_ok() {
        return Err(DaemonError::Conflict(format!(
            "image '{}' already exists",
            req.name
        )));
    }
    let dir = d.config.image_dir(&req.name);
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.with_extension(format!("importing-{seq}"));
    std::fs::create_dir_all(&tmp).map_err(|e| DaemonError::io("create", &tmp, e))?;
    let result = (|| -> Result<Image> {
        if let Some(src) = &rootfs {
            return crate::container::image::build(&req.name, src, &tmp, &dir);
        }
        let mut size = 0;
        let mut copy = |src: &Path, file: &str| -> Result<String> {
            sparse_copy(src, &tmp.join(file))?;
            size += std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
            Ok(dir.join(file).display().to_string())
        };
        let kernel = copy(&kernel, "kernel")?;
        let initrd = initrd.as_deref().map(|p| copy(p, "initrd")).transpose()?;
        let disk = disk.as_deref().map(|p| copy(p, "disk.raw")).transpose()?;
        Ok(Image {
            name: req.name.clone(),
            kind: Default::default(),
            kernel,
            rootfs: None,
            initrd,
            disk,
            cmdline,
            size_bytes: size,
            created_at: now(),
        })
    })();
    let image = match result {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if dir.exists() {
            return Err(DaemonError::Conflict(format!(
                "image '{}' already exists",
                req.name
            )));
        }
        return Err(DaemonError::io("rename", &dir, e));
    }
    if let Err(e) = d.db().insert_image(&image) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    d.event("image-imported", None, &image.name);
    Ok(image)
}

/// Deletes an image no instance uses, with its files.
pub fn delete(d: &Daemon, name: &str) -> Result<()> {
    let image = d.db().image(name)?;
    if let Some(disk) = &image.disk {
        let users = crate::disks::users_of(d, Path::new(disk))?;
        if !users.is_empty() {
            return Err(DaemonError::Conflict(format!(
                "image '{name}' backs the disks of instance(s) {}",
                users.join(", ")
            )));
        }
    }
    d.db().delete_image(name)?;
    let _ = std::fs::remove_dir_all(d.config.image_dir(name));
    d.event("image-deleted", None, name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_content_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut data = vec![7u8; 1000];
        data.extend(std::iter::repeat_n(0u8, 300_000));
        data.extend(b"tail");
        std::fs::write(&src, &data).unwrap();
        let dst = dir.path().join("dst");
        sparse_copy(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        // a file ending in zeros keeps its length
        std::fs::write(&src, vec![0u8; 200_000]).unwrap();
        sparse_copy(&src, &dst).unwrap();
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 200_000);
        assert!(sparse_copy(&dir.path().join("missing"), &dst).is_err());
    }
}
