//! Instance disks as qcow2 overlays: creating copies nothing, `copy` makes a linked clone
//! over a frozen layer, the VMM gets `format=qcow2` (a test guest starts on one), and
//! deletion respects backing chains (layers kept while needed, images refused with 409).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use api::daemon::{ImportImage, InstanceStatus, RestartPolicy};
use client::ClientError;
use common::{kvm_available, request, running, test_guest, TestDaemon};
use disk::Format;

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

fn read(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let img = disk::open(path, Format::Qcow2, true).unwrap();
    let mut b = vec![0u8; len];
    img.read_at(&mut b, off).unwrap();
    b
}

fn write(path: &Path, off: u64, data: &[u8]) {
    let img = disk::open(path, Format::Qcow2, false).unwrap();
    img.write_at(data, off).unwrap();
    img.flush().unwrap();
}

fn chain(path: &Path) -> Vec<PathBuf> {
    disk::info_chain(path, Some(Format::Qcow2))
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect()
}

#[test]
fn instance_disks_are_overlays_and_copies_are_linked_clones() {
    assert!(
        kvm_available(),
        "this test starts a guest: it needs /dev/kvm"
    );
    let d = TestDaemon::start();
    let c = d.client();
    let base = d.dir.path().join("base.raw");
    let base_data: Vec<u8> = (0..8 << 20).map(|i: u32| (i >> 9) as u8).collect();
    std::fs::write(&base, &base_data).unwrap();
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
    let pool_disk = PathBuf::from(image.disk.unwrap());

    // A new instance's disk: a small overlay over the pool's image disk.
    let mut r = request("a", "idle", RestartPolicy::No);
    r.image = "dimg".into();
    r.start = false;
    let a = c.create(&r).unwrap();
    let a_disk = PathBuf::from(a.disk.clone().unwrap());
    assert!(a_disk.ends_with("root.qcow2"), "{a_disk:?}");
    assert_eq!(chain(&a_disk), vec![a_disk.clone(), pool_disk.clone()]);
    assert!(std::fs::metadata(&a_disk).unwrap().len() < 1 << 20);
    assert_eq!(read(&a_disk, 4096, 512), base_data[4096..4608]);

    // The VMM is told the format: the guest starts on the qcow2 disk.
    c.start("a").unwrap();
    d.wait_for("a", "running", running);
    c.stop("a", true).unwrap();
    d.wait_for("a", "stopped", |i| i.status == InstanceStatus::Stopped);

    // A linked clone: both overlays over one frozen layer holding a's writes.
    write(&a_disk, 0, b"AAAA");
    let b = c.copy("a", "b").unwrap();
    let b_disk = PathBuf::from(b.disk.clone().unwrap());
    let a_chain = chain(&a_disk);
    let b_chain = chain(&b_disk);
    assert_eq!(a_chain.len(), 3, "{a_chain:?}");
    assert_eq!(b_chain.len(), 3, "{b_chain:?}");
    assert_eq!(a_chain[1], b_chain[1], "one shared layer");
    assert_eq!(a_chain[2], pool_disk);
    let layer = a_chain[1].clone();
    assert!(
        layer.starts_with(d.dir.path().join("state/layers")),
        "{layer:?}"
    );
    assert!(
        std::fs::metadata(&b_disk).unwrap().len() < 1 << 20,
        "no full copy"
    );
    assert_eq!(read(&b_disk, 0, 4), b"AAAA");
    write(&a_disk, 0, b"XXXX");
    assert_eq!(
        read(&b_disk, 0, 4),
        b"AAAA",
        "the clone does not see later writes"
    );
    assert_eq!(read(&a_disk, 0, 4), b"XXXX");

    // Deletion respects the chains.
    assert_eq!(status_of(c.delete_image("dimg")), 409);
    c.delete("a", false).unwrap();
    assert!(layer.exists(), "the layer b needs is kept");
    assert_eq!(read(&b_disk, 0, 4), b"AAAA");
    c.delete("b", false).unwrap();
    assert!(!layer.exists(), "the unreferenced layer is removed");
    c.delete_image("dimg").unwrap();
    assert!(!pool_disk.exists());
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_data,
        "the imported file is untouched"
    );
}
