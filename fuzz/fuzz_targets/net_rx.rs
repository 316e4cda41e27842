//! virtio-net receive: frames from the host (any length, any header bytes) filled into
//! arbitrary RX rings through the worker's `process_rx`. Buffers outside memory, device-
//! readable buffers, chains too small for a frame and corrupt rings must never reach past
//! guest memory or panic.
#![no_main]

mod common;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use common::*;
use libfuzzer_sys::fuzz_target;
use virtio::net::worker::FrameIo;

struct Frames(Mutex<VecDeque<Vec<u8>>>);
impl FrameIo for Frames {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mem) = mem() else { return };
    let mut input = Input(data);
    let rx = ring(&mem, 0, 0, &mut input);
    let tx = ring(&mem, 0x1000, 1, &mut Input(&[]));
    let mut frames = VecDeque::new();
    for _ in 0..(input.u8() % 8) {
        let len = usize::from(input.u16()) % (virtio::net::MAX_FRAME_LEN + 1);
        let head = input.bytes(64).to_vec();
        let mut f = vec![0xabu8; len];
        let n = head.len().min(len);
        f[..n].copy_from_slice(&head[..n]);
        frames.push_back(f);
    }
    let mut worker = net_worker(&mem, Arc::new(Frames(Mutex::new(frames))), rx, tx);
    worker.process_rx();
    worker.process_rx();
});
