//! VM snapshots capture the disk as a copy-on-write layer (test guests with a qcow2 disk on
//! /dev/kvm): a running VM's disk freezes into a layer and its VMM switches to a fresh
//! overlay (image ← layer ← root.qcow2, the new file open in the VMM); restores put a fresh
//! overlay over the layer, any number of times; stopped VMs get disk-only snapshots; layers
//! are collected once no chain or snapshot needs them, and a layer no snapshot names folds
//! into the one image over it, so chains stay short; a failed snapshot changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use api::daemon::InstanceStatus;
use client::daemon::DaemonClient;
use common::disks::{chain, import_disk_image, ino, launch, open_inodes, read, write};
use common::{alive, require_kvm, running, status_of, TestDaemon};
use disk::Format;

fn layers(d: &TestDaemon) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d.dir.path().join("state/layers"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A daemon with image `dimg`: the test guest and an 8 MiB disk.
fn daemon_with_disk_image() -> (TestDaemon, DaemonClient, PathBuf) {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    let pool = import_disk_image(&d, &c).pool;
    (d, c, pool)
}

#[test]
fn snapshots_freeze_the_disk_and_restore_onto_fresh_overlays() {
    let (d, c, pool) = daemon_with_disk_image();
    let root = launch(&d, &c, "a", true);
    let pid = d.wait_for("a", "running", running).pid.unwrap();
    let old_file = ino(&root);

    // A live snapshot: memory, state and the disk as a layer; the VMM is on a new overlay.
    let s1 = c.create_snapshot("a", "s1").unwrap();
    assert!(s1.stateful, "{s1:?}");
    let l1 = PathBuf::from(s1.disk_layer.clone().expect("a disk layer"));
    assert!(Path::new(&s1.path).join("state").is_file());
    assert_eq!(layers(&d), std::slice::from_ref(&l1));
    assert_eq!(chain(&root), [root.clone(), l1.clone(), pool.clone()]);
    assert_eq!(ino(&l1), old_file, "the layer is the file the guest wrote");
    let inst = c.get("a").unwrap();
    assert_eq!(
        (inst.status, inst.pid),
        (InstanceStatus::Running, Some(pid))
    );
    let fds = open_inodes(pid);
    assert!(
        fds.contains(&ino(&root)),
        "the VMM has the new overlay open"
    );
    assert!(fds.contains(&ino(&l1)), "…and the layer under it");

    // A taken name: refused before the guest is touched.
    assert_eq!(status_of(c.create_snapshot("a", "s1")), 409);
    assert_eq!(layers(&d), std::slice::from_ref(&l1));
    assert_eq!(chain(&root).len(), 3);

    // The guest writes on; a restore goes back to the snapshot (twice: the layer stays).
    c.stop("a", true).unwrap();
    write(&root, 0, b"AFTER");
    let l1_bytes = std::fs::read(&l1).unwrap();
    for round in 0..2 {
        let before = c.get("a").unwrap().pid;
        let restored = c
            .restore_snapshot("a", "s1")
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
        assert_eq!(restored.status, InstanceStatus::Running, "round {round}");
        let pid = restored.pid.unwrap();
        assert_ne!(Some(pid), before);
        assert_eq!(chain(&root), [root.clone(), l1.clone(), pool.clone()]);
        assert_eq!(
            read(&root, 0, 5),
            [0u8; 5],
            "the write after the snapshot is gone"
        );
        assert!(open_inodes(pid).contains(&ino(&root)));
        assert_eq!(
            std::fs::read(&l1).unwrap(),
            l1_bytes,
            "the layer is never written"
        );
    }

    // A stopped VM: a disk-only snapshot; restoring it keeps the VM stopped.
    c.stop("a", true).unwrap();
    write(&root, 0, b"BBBB");
    let s2 = c.create_snapshot("a", "s2").unwrap();
    assert!(!s2.stateful, "{s2:?}");
    let l2 = PathBuf::from(s2.disk_layer.clone().unwrap());
    assert_eq!(c.get("a").unwrap().status, InstanceStatus::Stopped);
    assert_eq!(
        chain(&root),
        [root.clone(), l2.clone(), l1.clone(), pool.clone()]
    );
    write(&root, 0, b"CCCC");
    let back = c.restore_snapshot("a", "s2").unwrap();
    assert_eq!(back.status, InstanceStatus::Stopped);
    assert_eq!(read(&root, 0, 4), b"BBBB");
    // …and boots a running one afresh on the snapshot's disk.
    let pid = c.start("a").unwrap().pid.unwrap();
    let rebooted = c.restore_snapshot("a", "s2").unwrap();
    assert_eq!(rebooted.status, InstanceStatus::Running);
    assert_ne!(rebooted.pid, Some(pid));
    assert!(!alive(pid));
    c.stop("a", true).unwrap();

    // Layers go once nothing needs them: s3's layer is kept by s3 alone after restoring s2.
    let s3 = c.create_snapshot("a", "s3").unwrap();
    let l3 = PathBuf::from(s3.disk_layer.unwrap());
    c.restore_snapshot("a", "s2").unwrap();
    assert_eq!(
        chain(&root),
        [root.clone(), l2.clone(), l1.clone(), pool.clone()]
    );
    assert!(l3.exists(), "kept for snapshot s3");
    c.delete_snapshot("a", "s3").unwrap();
    assert!(!l3.exists(), "collected with s3");
    // s1's layer, no snapshot's now, has one image over it (s2's layer): it folds into it.
    c.delete_snapshot("a", "s1").unwrap();
    assert!(!l1.exists(), "folded into the one layer over it");
    assert_eq!(chain(&root), [root.clone(), l2.clone(), pool.clone()]);
    assert_eq!(read(&root, 0, 4), b"BBBB");
    assert!(!Path::new(&s1.path).exists());

    // A linked clone of an instance with snapshots; the image cannot go while chained.
    let b = c.copy("a", "b").unwrap();
    let b_root = PathBuf::from(b.disk.unwrap());
    let b_chain = chain(&b_root);
    assert_eq!(b_chain.len(), 4, "{b_chain:?}");
    assert_eq!(b_chain[2..], [l2.clone(), pool.clone()]);
    assert_eq!(read(&b_root, 0, 4), b"BBBB");
    assert_eq!(status_of(c.delete_image("dimg")), 409);

    // Deleting an instance takes its snapshots along; the layers only b needs fold into
    // b's disk.
    c.delete("a", false).unwrap();
    assert!(!l2.exists());
    assert_eq!(chain(&b_root), [b_root.clone(), pool.clone()]);
    assert_eq!(read(&b_root, 0, 4), b"BBBB");
    c.delete("b", false).unwrap();
    assert_eq!(layers(&d), Vec::<PathBuf>::new());
    c.delete_image("dimg").unwrap();
}

#[test]
fn a_failed_snapshot_leaves_the_guest_on_its_disk() {
    let (d, c, pool) = daemon_with_disk_image();
    let root = launch(&d, &c, "a", true);
    let pid = d.wait_for("a", "running", running).pid.unwrap();
    let file = ino(&root);

    // The VMM refuses: the snapshot directory already holds a snapshot.
    let dir = d.dir.path().join("state/instances/a/snapshots/s1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state"), b"x").unwrap();
    assert_eq!(status_of(c.create_snapshot("a", "s1")), 409);
    std::fs::remove_dir_all(&dir).unwrap();

    // Freezing fails after the VMM wrote its snapshot (the new overlay's temporary name is
    // taken by a directory).
    let blocker = root.with_extension("qcow2.next");
    std::fs::create_dir(&blocker).unwrap();
    let e = c.create_snapshot("a", "s1").unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    std::fs::remove_dir(&blocker).unwrap();

    for _ in 0..2 {
        let inst = c.get("a").unwrap();
        assert_eq!(
            (inst.status, inst.pid),
            (InstanceStatus::Running, Some(pid))
        );
        assert_eq!(ino(&root), file, "the same disk file");
        assert_eq!(chain(&root), [root.clone(), pool.clone()]);
        assert_eq!(layers(&d), Vec::<PathBuf>::new());
        assert!(c.snapshots("a").unwrap().is_empty());
        assert!(!d.dir.path().join("state/instances/a/snapshots/s1").exists());
        assert!(open_inodes(pid).contains(&file));
        let vm = client::vm::VmClient::new(client::Endpoint::new(
            d.dir.path().join("run/instances/a/api.sock"),
        ));
        assert_eq!(
            vm.info().unwrap().state,
            api::vm::VmState::Running,
            "resumed"
        );
    }
    // And the next one works.
    let s = c.create_snapshot("a", "s1").unwrap();
    assert!(s.stateful && s.disk_layer.is_some(), "{s:?}");
    assert_eq!(c.get("a").unwrap().status, InstanceStatus::Running);

    // A paused guest is snapshotted as it is and stays paused.
    let vm = client::vm::VmClient::new(client::Endpoint::new(
        d.dir.path().join("run/instances/a/api.sock"),
    ));
    c.pause("a").unwrap();
    let s2 = c.create_snapshot("a", "s2").unwrap();
    let l2 = PathBuf::from(s2.disk_layer.unwrap());
    assert_eq!(chain(&root)[1], l2);
    assert_eq!(c.get("a").unwrap().status, InstanceStatus::Paused);
    assert_eq!(vm.info().unwrap().state, api::vm::VmState::Paused);
    assert_eq!(
        vm.disk_backend("disk0").unwrap().path,
        root.display().to_string()
    );
    assert!(open_inodes(pid).contains(&ino(&root)));
    c.resume("a").unwrap();
    assert_eq!(vm.info().unwrap().state, api::vm::VmState::Running);
}

#[test]
fn a_chain_too_deep_to_open_is_refused() {
    let (d, c, _) = daemon_with_disk_image();
    let root = launch(&d, &c, "a", false);
    let mut taken = 0;
    loop {
        match c.create_snapshot("a", &format!("s{taken}")) {
            Ok(_) => taken += 1,
            Err(e) => {
                assert_eq!(status_of::<()>(Err(e)), 409);
                break;
            }
        }
        assert!(taken < 20, "never refused");
    }
    assert_eq!(chain(&root).len(), disk::MAX_CHAIN_DEPTH);
    assert_eq!(taken, disk::MAX_CHAIN_DEPTH - 2);
    // The deepest chain kapsel opens still starts.
    c.start("a").unwrap();
    d.wait_for("a", "running", running);
}

/// What a daemon that died while taking a snapshot leaves behind: the record (incomplete),
/// maybe a layer link, maybe the new overlay, a VMM paused for it, maybe switched.
fn half_taken(d: &TestDaemon, name: &str, layer: &Path) {
    let db = rusqlite::Connection::open(d.dir.path().join("state/kapsel.db")).unwrap();
    db.execute(
        "INSERT INTO snapshots (instance, name, created_at, stateful, layer, complete)
         VALUES ('a', ?1, 1, 1, ?2, 0)",
        rusqlite::params![name, layer.display().to_string()],
    )
    .unwrap();
    let dir = d.dir.path().join("state/instances/a/snapshots").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("memory"), b"partial").unwrap();
}

#[test]
fn half_taken_snapshots_are_settled_when_the_daemon_starts_again() {
    let (mut d, c, pool) = daemon_with_disk_image();
    let root = launch(&d, &c, "a", true);
    let pid = d.wait_for("a", "running", running).pid.unwrap();
    let file = ino(&root);
    let vm = client::vm::VmClient::new(client::Endpoint::new(
        d.dir.path().join("run/instances/a/api.sock"),
    ));
    let layer_dir = d.dir.path().join("state/layers");
    std::fs::create_dir_all(&layer_dir).unwrap();
    let overlay = |layer: &Path| {
        let next = root.with_extension("qcow2.next");
        disk::create(
            &next,
            &disk::CreateOptions {
                backing: Some((layer.display().to_string(), Format::Qcow2)),
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::rename(&next, &root).unwrap();
    };
    // The API answers once the start-up recovery is done.
    let respawn = |d: &mut TestDaemon| {
        d.spawn();
        d.client().list().unwrap();
    };

    // Died after the layer link: the link goes, the guest runs on.
    d.kill9();
    vm.pause().unwrap();
    let l1 = layer_dir.join("a-1.qcow2");
    std::fs::hard_link(&root, &l1).unwrap();
    half_taken(&d, "s1", &l1);
    respawn(&mut d);
    assert!(!l1.exists());
    assert_eq!(
        vm.info().unwrap().state,
        api::vm::VmState::Running,
        "resumed"
    );
    assert!(c.snapshots("a").unwrap().is_empty());
    assert!(!d.dir.path().join("state/instances/a/snapshots/s1").exists());
    assert_eq!(ino(&root), file);

    // Died after the new overlay took the disk's name, before the VMM switched: the VMM's
    // file (the layer) takes the name back.
    d.kill9();
    vm.pause().unwrap();
    let l2 = layer_dir.join("a-2.qcow2");
    std::fs::hard_link(&root, &l2).unwrap();
    overlay(&l2);
    half_taken(&d, "s2", &l2);
    respawn(&mut d);
    assert_eq!(ino(&root), file, "the guest's file is the disk again");
    assert!(!l2.exists());
    assert_eq!(chain(&root), [root.clone(), pool.clone()]);
    assert_eq!(vm.info().unwrap().state, api::vm::VmState::Running);
    assert!(c.snapshots("a").unwrap().is_empty());

    // Died after the switch: the snapshot is complete.
    d.kill9();
    vm.pause().unwrap();
    let l3 = layer_dir.join("a-3.qcow2");
    std::fs::hard_link(&root, &l3).unwrap();
    overlay(&l3);
    let req = api::vm::DiskBackendRequest {
        path: root.display().to_string(),
        format: api::vm::DiskFormat::Qcow2,
    };
    vm.set_disk_backend("disk0", &req).unwrap();
    half_taken(&d, "s3", &l3);
    respawn(&mut d);
    let list = c.snapshots("a").unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].disk_layer.as_deref(), Some(l3.to_str().unwrap()));
    assert_eq!(chain(&root), [root.clone(), l3.clone(), pool.clone()]);
    assert_eq!(vm.info().unwrap().state, api::vm::VmState::Running);
    assert_eq!(
        c.get("a").unwrap().pid,
        Some(pid),
        "the same VMM throughout"
    );
}

/// The whole disk as it reads through its chain.
fn read_all(path: &Path) -> Vec<u8> {
    let img = disk::open(path, Format::Qcow2, true).unwrap();
    let mut b = vec![0u8; img.size() as usize];
    img.read_at(&mut b, 0).unwrap();
    b
}

/// `qemu-img check` finds no errors and no leaks in every image of the chain.
fn assert_clean(path: &Path) {
    for image in chain(path) {
        if format_is_raw(&image) {
            continue;
        }
        let out = std::process::Command::new("qemu-img")
            .arg("check")
            .arg(&image)
            .output()
            .expect("qemu-img (scripts/setup-host.sh installs qemu-utils)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success()
                && text.contains("No errors were found")
                && !text.contains("leaked"),
            "{image:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn format_is_raw(p: &Path) -> bool {
    p.extension().is_none_or(|e| e != "qcow2")
}

#[test]
fn deleted_snapshots_fold_their_layers_so_chains_stay_short() {
    let (mut d, c, pool) = daemon_with_disk_image();
    let root = launch(&d, &c, "a", false);
    let mut model = read_all(&root);
    let mut held = Vec::new(); // what each snapshot holds
    for i in 0..20usize {
        let data = format!("write {i:02}").into_bytes().repeat(100);
        let off = i * 397_000 + 100;
        write(&root, off as u64, &data);
        model[off..off + data.len()].copy_from_slice(&data);
        c.create_snapshot("a", &format!("s{i}")).unwrap();
        held.push(model.clone());
        if i >= 2 {
            c.delete_snapshot("a", &format!("s{}", i - 2)).unwrap();
            held[i - 2].clear();
        }
        let now = chain(&root);
        assert!(now.len() <= 4, "round {i}: {now:?}");
        assert!(layers(&d).len() <= 2, "round {i}: {:?}", layers(&d));
        assert!(
            read_all(&root) == model,
            "round {i}: the disk reads as written"
        );
    }
    let [l18, l19] = [18, 19].map(|i| {
        PathBuf::from(
            c.snapshots("a").unwrap()[i - 18]
                .disk_layer
                .clone()
                .unwrap(),
        )
    });
    assert_eq!(
        chain(&root),
        [root.clone(), l19.clone(), l18.clone(), pool.clone()]
    );
    assert_clean(&root);
    write(&root, 0, b"LATE");

    // A snapshot deleted while no daemon ran: the next start folds its layer.
    d.kill9();
    let db = rusqlite::Connection::open(d.dir.path().join("state/kapsel.db")).unwrap();
    db.execute("DELETE FROM snapshots WHERE name = 's18'", [])
        .unwrap();
    drop(db);
    d.spawn();
    let c = d.client();
    c.list().unwrap(); // answered once the start-up recovery is done
    assert_eq!(
        chain(&root),
        [root.clone(), l19.clone(), pool.clone()],
        "{}",
        d.log()
    );
    assert!(!l18.exists());
    model[..4].copy_from_slice(b"LATE");
    assert!(read_all(&root) == model);
    assert!(read_all(&l19) == held[19], "s19's layer holds what it held");

    // The last snapshot restores; deleted, its layer folds into the stopped disk.
    c.restore_snapshot("a", "s19").unwrap();
    assert!(read_all(&root) == held[19]);
    c.delete_snapshot("a", "s19").unwrap();
    assert_eq!(chain(&root), [root.clone(), pool.clone()]);
    assert_eq!(layers(&d), Vec::<PathBuf>::new());
    assert!(read_all(&root) == held[19]);
    assert_clean(&root);
    // …and the guest starts on it.
    c.start("a").unwrap();
    d.wait_for("a", "running", running);
}

#[test]
fn a_running_vm_s_layers_fold_while_it_runs_and_into_its_disk_once_stopped() {
    let (d, c, pool) = daemon_with_disk_image();
    let root = launch(&d, &c, "a", true);
    let pid = d.wait_for("a", "running", running).pid.unwrap();
    for i in 0..6usize {
        let s = c.create_snapshot("a", &format!("s{i}")).unwrap();
        assert!(s.stateful);
        if i >= 2 {
            c.delete_snapshot("a", &format!("s{}", i - 2)).unwrap();
        }
        assert!(chain(&root).len() <= 4, "round {i}: {:?}", chain(&root));
    }
    let inst = c.get("a").unwrap();
    assert_eq!(
        (inst.status, inst.pid),
        (InstanceStatus::Running, Some(pid))
    );
    assert!(open_inodes(pid).contains(&ino(&root)));

    // The layer right under the disk the VMM writes stays while it runs…
    let l5 = chain(&root)[1].clone();
    c.delete_snapshot("a", "s4").unwrap();
    assert_eq!(chain(&root), [root.clone(), l5.clone(), pool.clone()]);
    c.delete_snapshot("a", "s5").unwrap();
    assert_eq!(chain(&root), [root.clone(), l5.clone(), pool.clone()]);
    assert!(alive(pid));
    // …and folds into it once the VM stops.
    c.stop("a", true).unwrap();
    assert_eq!(chain(&root), [root.clone(), pool.clone()]);
    assert_eq!(layers(&d), Vec::<PathBuf>::new());
    assert_clean(&root);
    c.start("a").unwrap();
    d.wait_for("a", "running", running);
}
