//! Reading and writing cgroup control files with errors that name the file.

use super::CgroupError;
use std::path::Path;

pub(super) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

pub(super) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
}

pub(super) fn read_u64(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    let content = read(dir, file)?;
    let t = content.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse().map_err(|_| CgroupError::Parse {
        path: dir.join(file),
        content,
    })
}

/// The value of `key` in a flat keyed file (`key value` lines), 0 when absent.
pub(super) fn keyed(content: &str, key: &str) -> u64 {
    content
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

pub(super) fn pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    Ok(read(dir, "cgroup.procs")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

pub(super) fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
        path: dir.to_path_buf(),
        source,
    })
}

/// `rmdir`, retried while the kernel still reports the group busy (exiting tasks).
pub(super) fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    Err(CgroupError::Remove {
        path: dir.to_path_buf(),
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_finds_values() {
        let c = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(c, "oom_kill"), 3);
        assert_eq!(keyed(c, "missing"), 0);
    }
}
