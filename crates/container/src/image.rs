//! Images: a root filesystem directory, or a tarball unpacked once into the image cache.

use crate::error::ContainerError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image cache: `$KAPSEL_CACHE/images`, default `~/.cache/kapsel/images`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("KAPSEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kapsel")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/kapsel"));
    base.join("images")
}

/// A directory to use as an overlay lower layer for `source`: the directory itself, or
/// the unpacked tarball (`.tar`, `.tar.gz`, `.tgz`, `.tar.xz`, `.tar.zst` — whatever
/// `tar` recognises). Unpacking is keyed by file name, size and mtime and done once.
pub fn prepare(source: &Path, cache: &Path) -> Result<PathBuf, ContainerError> {
    let meta = std::fs::metadata(source)
        .map_err(ContainerError::io(format!("image {}", source.display())))?;
    if meta.is_dir() {
        return Ok(source.to_path_buf());
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let name = source
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        })
        .unwrap_or_default();
    let dest = cache.join(format!("{name}-{}-{mtime}", meta.len()));
    if dest.join(".kapsel-image-done").exists() {
        return Ok(dest);
    }
    let tmp = cache.join(format!(".{name}-{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(ContainerError::io(format!("mkdir {}", tmp.display())))?;
    let out = Command::new("tar")
        .arg("-xf")
        .arg(source)
        .arg("-C")
        .arg(&tmp)
        .arg("--numeric-owner")
        .output()
        .map_err(ContainerError::io("run tar"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(ContainerError::Init(format!(
            "unpacking {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::write(tmp.join(".kapsel-image-done"), b"")
        .map_err(ContainerError::io("write image stamp"))?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(ContainerError::io("install image"))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_is_used_in_place_and_tarball_is_unpacked_once() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/issue"), "hi").unwrap();
        assert_eq!(prepare(&src, tmp.path()).unwrap(), src);
        let tar = tmp.path().join("img.tar.gz");
        let st = Command::new("tar")
            .arg("-czf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let cache = tmp.path().join("cache");
        let a = prepare(&tar, &cache).unwrap();
        assert_eq!(std::fs::read_to_string(a.join("etc/issue")).unwrap(), "hi");
        assert_eq!(prepare(&tar, &cache).unwrap(), a);
        assert!(prepare(&tmp.path().join("missing.tar"), &cache).is_err());
    }
}
