//! A rate-limited disk on its real worker thread, driven like a guest driver keeps it busy
//! (several requests in flight, the ring wrapping many times, a kick per request), keeps
//! serving across run-time limit changes: every request completes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::request::VIRTIO_BLK_T_OUT;
use super::{Block, BlockConfig, STATUS_OK};
use crate::rate_limiter::{BlockGate, BucketConfig, RateLimit, RateLimiter};
use crate::test_util::*;
use crate::VirtioDevice;

const SLOTS: u16 = 4;
const DATA_LEN: u32 = 64 << 10;
const REQUESTS: u16 = 64;

#[test]
fn limited_disk_serves_every_request_across_limit_changes() {
    let path = std::env::temp_dir().join(format!("kapsel-blk-limit-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let mut blk = Block::new(
        "blk0",
        &BlockConfig {
            path: path.clone(),
            read_only: false,
            serial: "s".into(),
            format: None,
        },
    )
    .unwrap();
    let limiter = Arc::new(
        RateLimiter::new(RateLimit {
            bytes: Some(BucketConfig::with_rate(1 << 20)),
            ops: None,
        })
        .unwrap(),
    );
    let gate = limiter.clone();
    blk.set_gate(Box::new(move || Box::new(BlockGate(gate.clone()))));

    let mem = mem();
    let (ring, kick, irq) = activate_one_queue(&mut blk, &mem);

    let hdr = BUF;
    mem.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(hdr)).unwrap();
    mem.write_obj(0u64, GuestAddress(hdr + 8)).unwrap();
    let status = |slot: u16| BUF + 0x1000 + u64::from(slot);
    let data = BUF + 0x2000;
    let mut free: Vec<u16> = (0..SLOTS).collect();
    let (mut submitted, mut completed, mut avail) = (0u16, 0u16, 0u16);
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "stalled: {completed} of {REQUESTS} done, limiter blocked: {}",
            limiter.is_blocked()
        );
        while submitted < REQUESTS {
            let Some(slot) = free.pop() else { break };
            let d = slot * 3;
            mem.write_obj(0xffu8, GuestAddress(status(slot))).unwrap();
            ring.load_desc(d, (hdr, 16, F_NEXT, d + 1));
            ring.load_desc(d + 1, (data, DATA_LEN, F_NEXT, d + 2));
            ring.load_desc(d + 2, (status(slot), 1, F_WRITE, 0));
            ring.publish(avail, d);
            avail = avail.wrapping_add(1);
            submitted += 1;
            kick.write(1).unwrap();
            if submitted == REQUESTS / 2 {
                // faster at half time, a tighter ops limit at three quarters
                limiter
                    .update(RateLimit {
                        bytes: Some(BucketConfig::with_rate(2 << 20)),
                        ops: None,
                    })
                    .unwrap();
            }
            if submitted == REQUESTS * 3 / 4 {
                limiter
                    .update(RateLimit {
                        bytes: Some(BucketConfig::with_rate(4 << 20)),
                        ops: Some(BucketConfig {
                            rate: 100,
                            burst: 1,
                        }),
                    })
                    .unwrap();
            }
        }
        let used = ring.used_idx();
        while completed != used {
            let (id, _) = ring.used_at(completed);
            let slot = (id / 3) as u16;
            assert_eq!(
                mem.read_obj::<u8>(GuestAddress(status(slot))).unwrap(),
                STATUS_OK
            );
            free.push(slot);
            completed = completed.wrapping_add(1);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(irq.needs_reset(), 0);
    assert!(blk.reset());
    std::fs::remove_file(path).unwrap();
}
