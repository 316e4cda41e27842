//! A hostile driver against virtio-blk's request queue: every broken chain of
//! [`hostile_scenarios`] ends in a used element (with an error status where the chain has a
//! writable status byte) or NEEDS_RESET; an avail index that jumps past the queue size stops
//! the queue; every configuration access is bounded.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::request::VIRTIO_BLK_T_IN;
use super::worker::{QueueServer, Stats, Unlimited};
use super::{DiskFile, STATUS_OK};
use crate::test_util::*;

const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x2000;

fn good() -> Vec<Desc> {
    vec![
        (HDR, 16, F_NEXT, 1),
        (DATA, 1024, F_WRITE | F_NEXT, 2),
        (STATUS, 1, F_WRITE, 0),
    ]
}

fn image(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("kapsel-blk-hostile-{}-{tag}", std::process::id()));
    std::fs::write(&p, vec![0x5a; 64 * 512]).expect("image");
    p
}

fn server(mem: &arch::GuestMemoryMmap, ring: &RawRing<'_>, disk: Arc<DiskFile>) -> QueueServer {
    QueueServer {
        mem: mem.clone(),
        queue: ring.queue(),
        index: 0,
        disk,
        serial: *b"kapsel-hostile-00000",
        gate: Box::new(Unlimited),
        stats: Stats::default(),
        broken: false,
    }
}

#[test]
fn every_broken_chain_is_answered_or_resets_the_device() {
    let path = image("chains");
    let disk = Arc::new(DiskFile::open(&path, false).expect("open"));
    for s in hostile_scenarios(&good()) {
        let mem = mem();
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let ring = RawRing::new(&mem, 0);
        ring.load(&s);
        let irq = Recorder::default();
        let mut srv = server(&mem, &ring, disk.clone());
        srv.serve(&irq);
        check_outcome(&s, &ring, &irq);
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
        if s.name == "the good chain itself" {
            assert_eq!(ring.used(), [(0, 1025)]);
            assert_eq!(status, STATUS_OK);
        } else if status != 0xff {
            assert!(
                status == STATUS_OK || srv.stats.errors > 0,
                "{}: status {status} without an error counted",
                s.name
            );
        }
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn avail_index_jump_stops_the_queue_until_reset() {
    let path = image("jump");
    let disk = Arc::new(DiskFile::open(&path, false).expect("open"));
    let mem = mem();
    let ring = RawRing::new(&mem, 0);
    ring.corrupt_avail_index();
    let irq = Recorder::default();
    let mut srv = server(&mem, &ring, disk);
    srv.serve(&irq);
    assert_eq!(irq.needs_reset(), 1);
    assert!(srv.broken);
    assert_eq!(ring.used_idx(), 0);
    // a good request afterwards is not served: the queue waits for the reset
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
    ring.load(&Scenario {
        name: "good",
        descs: good(),
        heads: vec![0],
    });
    srv.serve(&irq);
    assert_eq!(ring.used_idx(), 0);
    assert_eq!(irq.needs_reset(), 1, "asked once");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn head_index_outside_the_queue_needs_reset() {
    let path = image("head");
    let disk = Arc::new(DiskFile::open(&path, false).expect("open"));
    let mem = mem();
    let ring = RawRing::new(&mem, 0);
    ring.load(&Scenario {
        name: "bad head",
        descs: good(),
        heads: vec![QSIZE + 3],
    });
    let irq = Recorder::default();
    let mut srv = server(&mem, &ring, disk);
    srv.serve(&irq);
    assert_eq!(irq.needs_reset(), 1);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn config_space_accesses_are_bounded() {
    let path = image("config");
    let mut blk = super::Block::new(
        "blk0",
        &super::BlockConfig {
            path: path.clone(),
            read_only: false,
            serial: "s".into(),
            format: None,
        },
    )
    .expect("block");
    check_config_space(&mut blk, 60);
    std::fs::remove_file(path).unwrap();
}
