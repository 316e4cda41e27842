//! `pci`: a conventional PCI bus 0 for the guest and the virtio-pci transport.
//!
//! - [`config`]: one function's 256-byte configuration space (header, BARs, capabilities,
//!   write masks).
//! - [`bus`]: the bus (32 slots, function 0), the [`PciDevice`] contract and the two ways to
//!   reach configuration space: ports 0xCF8/0xCFC ([`PciConfigIo`]) and ECAM ([`PciConfigMmio`]).
//! - [`host_bridge`]: device 00:00.0.
//! - [`allocator`]: BAR placement inside the 32-bit MMIO window.
//! - [`msix`]: the MSI-X capability, table and PBA, delivered through an [`MsiSink`]
//!   (KVM GSI routes + irqfds in production).
//! - [`virtio`]: the modern (1.x) virtio-pci transport around any [`virtio::VirtioDevice`].
//!
//! Every register a guest can reach takes any size at any offset: out-of-range or oddly
//! sized accesses read as ones/zeros and are otherwise ignored, never a panic.

pub mod allocator;
pub mod bus;
pub mod config;
pub mod host_bridge;
pub mod msix;
pub mod virtio;

pub use allocator::{BarAllocator, BarAllocatorError};
pub use bus::{
    PciBus, PciConfigIo, PciConfigMmio, PciDevice, PCI_CONFIG_IO_LEN, PCI_CONFIG_IO_PORT,
};
pub use config::PciConfiguration;
pub use host_bridge::HostBridge;
pub use msix::{KvmMsiSink, MsiSink, Msix};
pub use virtio::{VirtioPciDevice, VirtioPciError};
