//! The real devices (entropy, block, net on a fake backend, vsock) behind the transport,
//! driven by a hostile driver: notifications for queues that do not exist, were never set up
//! or are not ready; DRIVER_OK with queues missing; register and device-configuration
//! traffic of every size at every offset. Each ends in nothing, or in NEEDS_RESET with a
//! configuration interrupt — never in a panic.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use arch::GuestMemoryMmap;
use devices::BusDevice;
use virtio::VirtioDevice;
use vm_memory::GuestAddress;

use super::*;
use crate::msix::tests::Recorder;

const BAR: u64 = 0xc000_0000;

struct NoFrames;
impl virtio::net::worker::FrameIo for NoFrames {
    fn read_frame(&self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn write_frame(&self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every device model, by name.
fn devices(scratch: &Scratch) -> Vec<(&'static str, Box<dyn VirtioDevice>)> {
    let image = scratch.0.join("disk.img");
    std::fs::write(&image, vec![0u8; 64 * 512]).unwrap();
    let block = virtio::block::Block::new(
        "blk0",
        &virtio::block::BlockConfig {
            path: image,
            read_only: false,
            serial: "s".into(),
            format: None,
        },
    )
    .unwrap();
    let net = virtio::net::Net::with_io(
        Arc::new(NoFrames),
        "fake0",
        &virtio::net::NetConfig {
            tap: virtio::net::TapSpec::Auto,
            mac: None,
            host_ip: None,
            rx_limit: Default::default(),
            tx_limit: Default::default(),
        },
    )
    .unwrap();
    let vsock = virtio::vsock::Vsock::new(&virtio::vsock::VsockConfig {
        cid: 3,
        socket: scratch.0.join("v.sock"),
    })
    .unwrap();
    vec![
        ("rng", Box::new(virtio::rng::Rng::new("rng0"))),
        ("block", Box::new(block)),
        ("net", Box::new(net)),
        ("vsock", Box::new(vsock)),
        (
            "balloon",
            Box::new(virtio::balloon::Balloon::new(
                "balloon0",
                virtio::balloon::BalloonConfig {
                    deflate_on_oom: true,
                    stats_period: Some(std::time::Duration::from_secs(1)),
                    free_page_reporting: true,
                },
                virtio::balloon::BalloonControl::default(),
            )),
        ),
    ]
}

fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("kapsel-pci-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn transport(dev: Box<dyn VirtioDevice>) -> (VirtioPciDevice, Recorder) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let rec = Recorder::default();
    let d = VirtioPciDevice::new("dev", dev, mem, BAR, Box::new(rec.clone())).unwrap();
    (d, rec)
}

fn w(d: &mut VirtioPciDevice, off: u64, v: u32, len: usize) {
    BusDevice::write(d, off, &v.to_le_bytes()[..len]);
}
fn r(d: &mut VirtioPciDevice, off: u64, len: usize) -> u32 {
    let mut b = [0u8; 4];
    BusDevice::read(d, off, &mut b[..len]);
    u32::from_le_bytes(b)
}

/// Routes and unmasks MSI-X vector 0 as the configuration vector, accepts every offered
/// feature and sets FEATURES_OK.
fn negotiate(d: &mut VirtioPciDevice) {
    d.config_write(d.msix_cap_reg, 2, &0x8000u16.to_le_bytes());
    for (off, v) in [(0x4000, 0xfee0_0000u32), (0x4008, 0x30), (0x400c, 0)] {
        w(d, off, v, 4);
    }
    w(d, 0x10, 0, 2);
    w(d, 0x14, 3, 1);
    for sel in 0..2 {
        w(d, 0x00, sel, 4);
        let f = r(d, 0x04, 4);
        w(d, 0x08, sel, 4);
        w(d, 0x0c, f, 4);
    }
    w(d, 0x14, 0xb, 1);
    assert_eq!(r(d, 0x14, 1), 0xb);
}

/// Makes queue `q` ready at a valid place in guest memory.
fn ready_queue(d: &mut VirtioPciDevice, q: u16) {
    let base = 0x10000 + u32::from(q) * 0x4000;
    w(d, 0x16, u32::from(q), 2);
    w(d, 0x18, 16, 2);
    for (off, v) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
        w(d, off, v, 4);
        w(d, off + 4, 0, 4);
    }
    w(d, 0x1c, 1, 2);
}

/// Notifies every queue slot of the notify area, existing or not, with every width.
fn notify_everything(d: &mut VirtioPciDevice) {
    for off in (0..0x1000u64).step_by(2) {
        for len in [1usize, 2, 4] {
            w(d, 0x3000 + off, 0xffff_ffff, len);
        }
    }
}

#[test]
fn kicks_for_queues_never_set_up_or_not_ready_do_nothing() {
    let s = scratch("kicks");
    for (name, dev) in devices(&s) {
        let (mut d, rec) = transport(dev);
        notify_everything(&mut d);
        assert_eq!(d.device_status(), 0, "{name}");
        negotiate(&mut d);
        notify_everything(&mut d);
        assert_eq!(d.device_status(), 0xb, "{name}");
        assert!(rec.take().iter().all(|e| e.starts_with("route")), "{name}");
        w(&mut d, 0x14, 0, 1);
    }
}

#[test]
fn driver_ok_with_queues_missing_needs_reset() {
    let s = scratch("missing");
    for (name, dev) in devices(&s) {
        let queues = dev.queue_max_sizes().len() as u16;
        let (mut d, rec) = transport(dev);
        // no queue ready at all
        negotiate(&mut d);
        rec.take();
        w(&mut d, 0x14, 0xf, 1);
        assert_eq!(
            d.device_status() & STATUS_NEEDS_RESET,
            STATUS_NEEDS_RESET,
            "{name}"
        );
        assert_eq!(rec.take(), ["fire 0"], "{name}: config interrupt");
        notify_everything(&mut d);
        // a reset clears it; all queues but the last ready is still not enough for
        // multi-queue devices, and enough for single-queue ones
        w(&mut d, 0x14, 0, 1);
        assert_eq!(d.device_status(), 0, "{name}");
        negotiate(&mut d);
        for q in 0..queues.saturating_sub(1).max(1) {
            ready_queue(&mut d, q);
        }
        w(&mut d, 0x14, 0xf, 1);
        let needs_reset = d.device_status() & STATUS_NEEDS_RESET != 0;
        assert_eq!(needs_reset, queues > 1, "{name}");
        notify_everything(&mut d);
        w(&mut d, 0x14, 0, 1);
        assert_eq!(d.device_status(), 0, "{name}");
    }
}

#[test]
fn hostile_register_and_device_config_traffic_never_panics() {
    let s = scratch("traffic");
    for (name, dev) in devices(&s) {
        let (mut d, _) = transport(dev);
        // every size at every offset of the device configuration region, while live
        negotiate(&mut d);
        for q in 0..4 {
            ready_queue(&mut d, q);
        }
        w(&mut d, 0x14, 0xf, 1);
        for off in 0..0x1000u64 {
            for len in [1usize, 2, 3, 4, 8, 16] {
                let mut buf = vec![0u8; len];
                BusDevice::read(&mut d, 0x2000 + off, &mut buf);
                BusDevice::write(&mut d, 0x2000 + off, &vec![0xa5; len]);
            }
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ name.len() as u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = [1usize, 2, 4, 8, 3, 0, 16, 4][(x & 7) as usize];
            let offset = match (x >> 3) & 3 {
                0 => (x >> 8) % 0x40,
                1 => 0x2000 + (x >> 8) % 0x1000,
                2 => (x >> 8) % BAR_SIZE,
                _ => x >> 8,
            };
            let data: Vec<u8> = (0..len).map(|i| (x >> (i % 8)) as u8).collect();
            let mut buf = vec![0u8; len];
            if (x >> 5) & 1 == 0 {
                BusDevice::write(&mut d, offset, &data);
            } else {
                BusDevice::read(&mut d, offset, &mut buf);
            }
        }
        w(&mut d, 0x14, 0, 1);
    }
}
