//! The virtio-blk request parser on arbitrary descriptor chains and guest memory contents.
//!
//! Input: 64 bytes written into guest memory at the header address, then descriptors of
//! 13 bytes each (addr u64, len u32, flags u8: bit 0 = device-writable).
#![no_main]

use arch::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio::block::Request;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let _ = mem.write_slice(&data[..64], GuestAddress(0x1000));
    let descs: Vec<_> = data[64..]
        .chunks_exact(13)
        .take(2048)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&c[..8]);
            let mut l = [0u8; 4];
            l.copy_from_slice(&c[8..12]);
            // Keep most addresses near guest memory so the deeper checks run.
            let addr = u64::from_le_bytes(a) % (2 * MEM_SIZE as u64);
            (GuestAddress(addr), u32::from_le_bytes(l), c[12] & 1 == 1)
        })
        .collect();
    let capacity = u64::from(data[0]) << 8;
    if let Ok(req) = Request::parse(&mem, &descs, capacity) {
        // Whatever parses is in range of the disk and inside guest memory.
        assert!(req.data.iter().all(|(a, l)| a.0 + u64::from(*l) <= MEM_SIZE as u64));
        assert!(req.status.0 < MEM_SIZE as u64);
    }
});
