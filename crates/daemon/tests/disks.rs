//! Instance disks as qcow2 overlays: creating copies nothing, `copy` makes a linked clone
//! over a frozen layer, the VMM gets `format=qcow2` (a test guest starts on one), and
//! deletion respects backing chains (layers kept while needed, images refused with 409).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use api::daemon::InstanceStatus;
use common::disks::{chain, import_disk_image, launch, read, write};
use common::{kvm_available, running, status_of, TestDaemon};

#[test]
fn instance_disks_are_overlays_and_copies_are_linked_clones() {
    assert!(
        kvm_available(),
        "this test starts a guest: it needs /dev/kvm"
    );
    let d = TestDaemon::start();
    let c = d.client();
    let image = import_disk_image(&d, &c);
    let (base, base_data, pool_disk) = (image.base, image.data, image.pool);

    // A new instance's disk: a small overlay over the pool's image disk.
    let a_disk = launch(&d, &c, "a", false);
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
