//! The run-time switch of a disk's image on an active device with its real worker thread:
//! writes before the switch land in the old image, writes after it in the new overlay,
//! reads after it see both; an image of another size or writability is refused and the old
//! image keeps serving.

use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::request::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use super::{Block, BlockConfig, ReplaceError, STATUS_OK};
use crate::test_util::*;
use crate::VirtioDevice;

const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x3000;

/// Drives one request through the ring like a driver and waits for it.
struct Driver<'m> {
    ring: RawRing<'m>,
    kick: EventFd,
    next: u16,
}

impl Driver<'_> {
    fn request(&mut self, kind: u32, sector: u64, data: &mut [u8; 512]) {
        let mem = self.ring.memory();
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        mem.write_slice(data, GuestAddress(DATA)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let data_flags = if kind == VIRTIO_BLK_T_IN {
            F_NEXT | F_WRITE
        } else {
            F_NEXT
        };
        self.ring.load_desc(0, (HDR, 16, F_NEXT, 1));
        self.ring.load_desc(1, (DATA, 512, data_flags, 2));
        self.ring.load_desc(2, (STATUS, 1, F_WRITE, 0));
        self.ring.publish(self.next, 0);
        self.next = self.next.wrapping_add(1);
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ring.used_idx() != self.next {
            assert!(Instant::now() < deadline, "request {kind} never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), STATUS_OK);
        mem.read_slice(data, GuestAddress(DATA)).unwrap();
    }
}

/// A scratch directory removed when the test ends.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kapsel-blkswap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_image(path: &Path, format: disk::Format, sector: u64) -> [u8; 512] {
    let img = disk::open(path, format, true).unwrap();
    let mut b = [0u8; 512];
    img.read_at(&mut b, sector * 512).unwrap();
    b
}

#[test]
fn an_active_disk_continues_on_an_overlay_of_its_image() {
    let dir = Scratch::new("active");
    let path = dir.path().join("root.qcow2");
    disk::create(
        &path,
        &disk::CreateOptions {
            size: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let mut blk = Block::new(
        "disk0",
        &BlockConfig {
            path: path.clone(),
            read_only: false,
            serial: "disk0".into(),
            format: Some(disk::Format::Qcow2),
        },
    )
    .unwrap();
    let mem = mem();
    let (ring, kick, irq) = activate_one_queue(&mut blk, &mem);
    let mut drv = Driver {
        ring,
        kick,
        next: 0,
    };
    drv.request(VIRTIO_BLK_T_OUT, 0, &mut [b'A'; 512]);

    // The daemon's freeze: the open image becomes a layer (same inode), a new overlay over
    // it takes the image's name.
    let layer = dir.path().join("layer.qcow2");
    std::fs::hard_link(&path, &layer).unwrap();
    let next = dir.path().join("next.qcow2");
    disk::create(
        &next,
        &disk::CreateOptions {
            backing: Some((layer.display().to_string(), disk::Format::Qcow2)),
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::rename(&next, &path).unwrap();

    // Refused: another size, another writability; the old image keeps serving.
    let small = dir.path().join("small.qcow2");
    disk::create(
        &small,
        &disk::CreateOptions {
            size: Some(1 << 19),
            ..Default::default()
        },
    )
    .unwrap();
    let e = blk
        .replace_disk(|| disk::open(&small, disk::Format::Qcow2, false))
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReplaceError::Size {
                current: 2048,
                new: 1024
            }
        ),
        "{e}"
    );
    let e = blk
        .replace_disk(|| disk::open(&path, disk::Format::Qcow2, true))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the new image is read-only, the disk is writable"
    );
    let e = blk
        .replace_disk(|| disk::open(&dir.path().join("missing"), disk::Format::Qcow2, false))
        .unwrap_err();
    assert!(matches!(e, ReplaceError::Open(_)), "{e}");
    drv.request(VIRTIO_BLK_T_OUT, 1, &mut [b'B'; 512]);

    blk.replace_disk(|| disk::open(&path, disk::Format::Qcow2, false))
        .unwrap();
    // The old image was flushed: its qcow2 metadata reached the file.
    assert_eq!(read_image(&layer, disk::Format::Qcow2, 1), [b'B'; 512]);
    drv.request(VIRTIO_BLK_T_OUT, 2, &mut [b'C'; 512]);
    let mut got = [0u8; 512];
    drv.request(VIRTIO_BLK_T_IN, 0, &mut got);
    assert_eq!(got, [b'A'; 512], "the overlay reads through to the layer");
    drv.request(VIRTIO_BLK_T_IN, 2, &mut got);
    assert_eq!(got, [b'C'; 512]);
    // The layer stopped changing at the switch; the overlay holds only the later write.
    assert_eq!(read_image(&layer, disk::Format::Qcow2, 2), [0; 512]);
    let top = disk::info_chain(&path, Some(disk::Format::Qcow2)).unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[1].path, layer);

    // Paused for a snapshot, switched, resumed: the paused worker continues on the new one.
    blk.pause_and_save().unwrap();
    let layer2 = dir.path().join("layer2.qcow2");
    std::fs::rename(&path, &layer2).unwrap();
    disk::create(
        &path,
        &disk::CreateOptions {
            backing: Some((layer2.display().to_string(), disk::Format::Qcow2)),
            ..Default::default()
        },
    )
    .unwrap();
    blk.replace_disk(|| disk::open(&path, disk::Format::Qcow2, false))
        .unwrap();
    blk.resume().unwrap();
    drv.request(VIRTIO_BLK_T_OUT, 3, &mut [b'D'; 512]);
    blk.pause_and_save().unwrap(); // flushes
    assert_eq!(read_image(&layer2, disk::Format::Qcow2, 3), [0; 512]);
    assert_eq!(read_image(&path, disk::Format::Qcow2, 3), [b'D'; 512]);
    assert_eq!(read_image(&path, disk::Format::Qcow2, 0), [b'A'; 512]);
    assert_eq!(irq.needs_reset(), 0);
    assert!(blk.reset());
}

#[test]
fn an_inactive_disk_switches_too() {
    let dir = Scratch::new("inactive");
    let a = dir.path().join("a.raw");
    let b = dir.path().join("b.raw");
    std::fs::write(&a, vec![1u8; 4096]).unwrap();
    std::fs::write(&b, vec![2u8; 4096]).unwrap();
    let mut blk = Block::new(
        "d",
        &BlockConfig {
            path: a,
            read_only: true,
            serial: "d".into(),
            format: Some(disk::Format::Raw),
        },
    )
    .unwrap();
    blk.replace_disk(|| disk::open(&b, disk::Format::Raw, true))
        .unwrap();
    assert_eq!(blk.sectors(), 8);
    let any = blk.as_any_mut().expect("a disk is reachable as itself");
    assert!(any.downcast_mut::<Block>().is_some());
}
