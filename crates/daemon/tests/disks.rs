//! Instance disks as qcow2 overlays: creating copies nothing, `copy` makes a linked clone
//! over a frozen layer (of a running VM too: frozen while paused, its VMM switched), the VMM
//! gets `format=qcow2` (a test guest starts on one), and deletion respects backing chains
//! (a layer one disk alone needs folds into it, images in a chain are refused with 409).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use api::daemon::InstanceStatus;
use common::disks::{chain, import_disk_image, ino, launch, open_inodes, read, write};
use common::{require_kvm, running, status_of, TestDaemon};

#[test]
fn instance_disks_are_overlays_and_copies_are_linked_clones() {
    require_kvm();
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
    assert!(
        !layer.exists(),
        "the layer only b needs folds into b's disk"
    );
    assert_eq!(chain(&b_disk), vec![b_disk.clone(), pool_disk.clone()]);
    assert_eq!(read(&b_disk, 0, 4), b"AAAA");
    c.delete("b", false).unwrap();
    c.delete_image("dimg").unwrap();
    assert!(!pool_disk.exists());
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_data,
        "the imported file is untouched"
    );
}

#[test]
fn a_running_vm_is_copied_live_onto_a_shared_layer() {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    let image = import_disk_image(&d, &c);
    let a_disk = launch(&d, &c, "a", true);
    let pool = chain(&a_disk)[1].clone();
    let pid = d.wait_for("a", "running", running).pid.unwrap();
    let vm = client::vm::VmClient::new(client::Endpoint::new(
        d.dir.path().join("run/instances/a/api.sock"),
    ));

    // A failed copy (the new overlay's temporary name is taken) changes nothing.
    let blocker = a_disk.with_extension("qcow2.next");
    std::fs::create_dir(&blocker).unwrap();
    let file = ino(&a_disk);
    assert!(c.copy("a", "b").is_err());
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(status_of(c.get("b")), 404);
    assert_eq!(ino(&a_disk), file);
    assert_eq!(chain(&a_disk), [a_disk.clone(), pool.clone()]);
    assert_eq!(vm.info().unwrap().state, api::vm::VmState::Running);

    // The copy: the source runs on, on a fresh overlay over the layer the clone shares.
    let b = c
        .copy("a", "b")
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let b_disk = PathBuf::from(b.disk.unwrap());
    assert_eq!(b.status, InstanceStatus::Stopped);
    let a_chain = chain(&a_disk);
    assert_eq!(a_chain.len(), 3, "{a_chain:?}");
    assert_eq!(
        chain(&b_disk),
        [b_disk.clone(), a_chain[1].clone(), pool.clone()]
    );
    assert_eq!(
        ino(&a_chain[1]),
        file,
        "the layer is the file the guest wrote"
    );
    let a = c.get("a").unwrap();
    assert_eq!((a.status, a.pid), (InstanceStatus::Running, Some(pid)));
    assert_eq!(
        vm.info().unwrap().state,
        api::vm::VmState::Running,
        "resumed"
    );
    assert!(
        open_inodes(pid).contains(&ino(&a_disk)),
        "switched to the new overlay"
    );
    assert_eq!(read(&b_disk, 4096, 512), image.data[4096..4608]);

    // A paused VM is copied too and stays paused; the clone starts.
    c.pause("a").unwrap();
    c.copy("a", "c").unwrap();
    assert_eq!(c.get("a").unwrap().status, InstanceStatus::Paused);
    assert_eq!(vm.info().unwrap().state, api::vm::VmState::Paused);
    c.resume("a").unwrap();
    c.start("b").unwrap();
    d.wait_for("b", "running", running);
}
