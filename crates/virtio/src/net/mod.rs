//! virtio-net on a host TAP device.
//!
//! - [`tap`]: `/dev/net/tun`, `IFF_VNET_HDR`, offloads, host-side address.
//! - [`device`]: the [`VirtioDevice`](crate::VirtioDevice) model: features, config space,
//!   activation and reset.
//! - [`worker`]: the thread that moves frames between the queues and the TAP, under the
//!   per-direction [`RateLimiter`](crate::rate_limiter::RateLimiter)s.

pub mod device;
#[cfg(test)]
mod hostile_tests;
pub mod tap;
pub mod worker;

use std::net::Ipv4Addr;

use crate::rate_limiter::RateLimit;

pub use device::{Net, NetError};
pub use tap::{Tap, TapError};

/// The virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// RX queue, then TX queue (no control queue, one queue pair).
pub const NUM_QUEUES: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (with `num_buffers`): every frame starts with it.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame the device moves: a 64 KiB GSO packet, its Ethernet header and the header.
pub const MAX_FRAME_LEN: usize = 65_550 + VNET_HDR_LEN;

/// Feature bits of virtio-net (virtio 1.2, 5.1.3).
pub mod features {
    pub const CSUM: u32 = 0;
    pub const GUEST_CSUM: u32 = 1;
    pub const MAC: u32 = 5;
    pub const GUEST_TSO4: u32 = 7;
    pub const GUEST_TSO6: u32 = 8;
    pub const GUEST_ECN: u32 = 9;
    pub const HOST_TSO4: u32 = 11;
    pub const HOST_TSO6: u32 = 12;
    pub const HOST_ECN: u32 = 13;
    pub const STATUS: u32 = 16;
}

/// Which TAP to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSpec {
    /// Create a new `kapsel%d` TAP, bring it up, remove it on exit.
    Auto,
    /// Use (or create) the TAP with this name.
    Named(String),
}

/// One network card as the user configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapSpec,
    /// The guest's MAC address; a random locally administered one when `None`.
    pub mac: Option<[u8; 6]>,
    /// Address (and prefix length) for the host side of the TAP.
    pub host_ip: Option<(Ipv4Addr, u8)>,
    /// Guest receive direction (host → guest).
    pub rx_limit: RateLimit,
    /// Guest transmit direction (guest → host).
    pub tx_limit: RateLimit,
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != 6 {
        // fall back on the pid and time: uniqueness on one host is what matters
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let v = t ^ std::process::id().rotate_left(16);
        mac[2..].copy_from_slice(&v.to_le_bytes());
    }
    mac[0] = 0x52;
    mac[1] = 0x54;
    mac
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_mac_is_local_unicast() {
        let m = random_mac();
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 1, 2]),
            "52:54:00:ab:01:02"
        );
    }
}
