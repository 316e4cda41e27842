//! virtio-net transmit: arbitrary TX rings (descriptor chains, directions, lengths, loops,
//! avail index jumps) and virtio_net_hdr contents, through the worker's `process_tx`. Every
//! frame handed to the TAP must fit the largest frame; a corrupt ring stops the card.
#![no_main]

mod common;

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use common::*;
use libfuzzer_sys::fuzz_target;
use virtio::net::worker::FrameIo;

#[derive(Default)]
struct Sink(Mutex<usize>);
impl FrameIo for Sink {
    fn read_frame(&self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        assert!(buf.len() <= virtio::net::MAX_FRAME_LEN);
        assert!(buf.len() >= virtio::net::VNET_HDR_LEN);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(buf.len())
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mem) = mem() else { return };
    let mut input = Input(data);
    let rx = ring(&mem, 0, 0, &mut Input(&[]));
    let tx = ring(&mem, 0x1000, 1, &mut input);
    fill_data(&mem, &mut input, 4096);
    let mut worker = net_worker(&mem, Arc::new(Sink::default()), rx, tx);
    worker.process_tx();
    // a second pass (the guest kicking again) must be as safe
    worker.process_tx();
});
