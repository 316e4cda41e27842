//! virtio-vsock with the host side on UNIX sockets (the Firecracker convention).
//!
//! - Host → guest: a host program connects to the UNIX socket `PATH`, writes
//!   `CONNECT <port>\n`, and reads `OK <hostport>\n` once the guest accepted; then the stream
//!   carries the connection.
//! - Guest → host: a guest connection to CID 2 port `P` is connected to the UNIX socket
//!   `PATH_P`, which a host program listens on.
//!
//! - [`packet`]: the packet header fields and operations we send and receive.
//! - [`conn`]: one connection: its stream, buffers and credit accounting.
//! - [`muxer`]: every connection of one device, the listener and the CONNECT handshakes.
//! - [`worker`]: the thread serving the queues and the sockets.
//! - [`device`]: the [`VirtioDevice`](crate::VirtioDevice) model.

pub mod conn;
pub mod device;
#[cfg(test)]
mod hostile_tests;
pub mod muxer;
pub mod packet;
pub mod worker;

use std::path::PathBuf;

pub use device::{Vsock, VsockError};

/// The virtio device ID of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// RX, TX, event.
pub const NUM_QUEUES: usize = 3;
pub const QUEUE_SIZE: u16 = 256;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Smallest CID a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// Largest payload of one packet we accept or send.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// The vsock device as the user configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u64,
    /// The UNIX socket for host-initiated connections; `PATH_<port>` for the guest's.
    pub socket: PathBuf,
}
