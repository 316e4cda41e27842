//! Instance disks under test: image `dimg` with a raw disk the daemon turns into qcow2
//! overlays, and direct reads, writes and backing chains of those files.

use std::path::{Path, PathBuf};

use api::daemon::{ImportImage, RestartPolicy};
use client::daemon::DaemonClient;
use disk::Format;

use super::{request, test_guest, TestDaemon};

/// What [`import_disk_image`] made.
pub struct DiskImage {
    /// The imported raw file (the daemon copies it into its pool).
    pub base: PathBuf,
    /// Its 8 MiB: sector n holds byte n (mod 256).
    pub data: Vec<u8>,
    /// The image's disk in the pool.
    pub pool: PathBuf,
}

/// Imports image `dimg`: the test guest and an 8 MiB disk.
pub fn import_disk_image(d: &TestDaemon, c: &DaemonClient) -> DiskImage {
    let base = d.dir.path().join("base.raw");
    let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i >> 9) as u8).collect();
    std::fs::write(&base, &data).unwrap();
    let image = c
        .import_image(&ImportImage {
            name: "dimg".into(),
            kernel: test_guest().display().to_string(),
            rootfs: None,
            initrd: None,
            disk: Some(base.display().to_string()),
            cmdline: Some("console=ttyS0".into()),
        })
        .unwrap();
    DiskImage {
        base,
        data,
        pool: PathBuf::from(image.disk.unwrap()),
    }
}

/// Creates instance `name` of `dimg` (started or not); returns its disk.
pub fn launch(d: &TestDaemon, c: &DaemonClient, name: &str, start: bool) -> PathBuf {
    let mut r = request(name, "idle", RestartPolicy::No);
    r.image = "dimg".into();
    r.start = start;
    let inst = c.create(&r).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    PathBuf::from(inst.disk.unwrap())
}

pub fn read(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let img = disk::open(path, Format::Qcow2, true).unwrap();
    let mut b = vec![0u8; len];
    img.read_at(&mut b, off).unwrap();
    b
}

/// Writes into a stopped instance's disk, as its guest would have.
pub fn write(path: &Path, off: u64, data: &[u8]) {
    let img = disk::open(path, Format::Qcow2, false).unwrap();
    img.write_at(data, off).unwrap();
    img.flush().unwrap();
}

/// The files of `path`'s backing chain, `path` first.
pub fn chain(path: &Path) -> Vec<PathBuf> {
    disk::info_chain(path, Some(Format::Qcow2))
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect()
}

pub fn ino(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

/// Inodes of the regular files process `pid` has open.
pub fn open_inodes(pid: i32) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.ino())
        .collect()
}
