//! Run-time interrupt and notification plumbing that devices use: GSI routing for MSI
//! (`KVM_SET_GSI_ROUTING`), irqfds and ioeventfds.
//!
//! KVM replaces the whole routing table on every update, so the router keeps the table: the
//! default routes of the legacy PIC/IOAPIC pins (GSIs 0–23, which KVM installs with the
//! irqchip and which must survive) plus one MSI route per allocated GSI.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::Vm;
use crate::HvError;

/// Number of IOAPIC pins, hence of legacy GSIs; MSI GSIs are allocated above them.
const IOAPIC_PINS: u32 = 24;
/// KVM's limit on routing entries.
const MAX_ROUTES: u32 = 4096;

/// Where a guest write raises an ioeventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// One MSI message as the guest programs it (an MSI-X table entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub data: u32,
}

/// Shared handle for routing MSIs and registering irqfds/ioeventfds at run time.
#[derive(Debug)]
pub struct IrqRouter {
    fd: Arc<VmFd>,
    next_gsi: AtomicU32,
    msi_routes: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl Vm {
    /// A router sharing this VM; devices keep it (in an `Arc`) for their whole life.
    pub fn irq_router(&self) -> Arc<IrqRouter> {
        Arc::new(IrqRouter {
            fd: Arc::clone(&self.fd),
            next_gsi: AtomicU32::new(IOAPIC_PINS),
            msi_routes: Mutex::new(BTreeMap::new()),
        })
    }
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_route(gsi: u32, msg: &MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.addr_lo;
    e.u.msi.address_hi = msg.addr_hi;
    e.u.msi.data = msg.data;
    e
}

/// The routes KVM installs by default with the in-kernel irqchip (kernel `irq_comm.c`):
/// GSIs 0–15 to both the PIC pair and the IOAPIC, 16–23 to the IOAPIC only.
fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::with_capacity(40);
    for gsi in 0..16 {
        let pic = if gsi < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        v.push(irqchip_route(gsi, pic, gsi % 8));
    }
    for gsi in 0..IOAPIC_PINS {
        v.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

fn ioctl_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HvError {
    HvError::ioctl(op)
}

impl IrqRouter {
    /// Reserves a GSI for an MSI vector.
    pub fn allocate_gsi(&self) -> Result<u32, HvError> {
        let gsi = self.next_gsi.fetch_add(1, Ordering::Relaxed);
        if gsi >= MAX_ROUTES {
            return Err(HvError::MissingCap("free GSI for MSI routing"));
        }
        Ok(gsi)
    }

    /// Routes `gsi` to the MSI `msg` (replacing any earlier route of that GSI).
    pub fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), HvError> {
        let mut routes = self
            .msi_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if routes.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        routes.insert(gsi, msg);
        self.commit(&routes)
    }

    /// Drops the route of `gsi` (an irqfd on it then delivers nothing).
    pub fn clear_msi_route(&self, gsi: u32) -> Result<(), HvError> {
        let mut routes = self
            .msi_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if routes.remove(&gsi).is_some() {
            self.commit(&routes)?;
        }
        Ok(())
    }

    fn commit(&self, routes: &BTreeMap<u32, MsiMessage>) -> Result<(), HvError> {
        let mut entries = legacy_routes();
        entries.extend(routes.iter().map(|(gsi, msg)| msi_route(*gsi, msg)));
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| HvError::MissingCap("room for this many GSI routes"))?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(ioctl_err("KVM_SET_GSI_ROUTING"))
    }

    /// Makes a write to `evt` raise `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), HvError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(ioctl_err("KVM_IRQFD"))
    }

    /// Undoes [`IrqRouter::register_irqfd`].
    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), HvError> {
        self.fd
            .unregister_irqfd(evt, gsi)
            .map_err(ioctl_err("KVM_IRQFD"))
    }

    /// Makes any guest write to `addr` signal `evt` without leaving the kernel.
    pub fn register_ioevent(&self, evt: &EventFd, addr: IoEventAddress) -> Result<(), HvError> {
        self.fd
            .register_ioevent(evt, &kvm_addr(addr), kvm_ioctls::NoDatamatch)
            .map_err(ioctl_err("KVM_IOEVENTFD"))
    }

    /// Undoes [`IrqRouter::register_ioevent`].
    pub fn unregister_ioevent(&self, evt: &EventFd, addr: IoEventAddress) -> Result<(), HvError> {
        self.fd
            .unregister_ioevent(evt, &kvm_addr(addr), kvm_ioctls::NoDatamatch)
            .map_err(ioctl_err("KVM_IOEVENTFD"))
    }
}

fn kvm_addr(addr: IoEventAddress) -> kvm_ioctls::IoEventAddress {
    match addr {
        IoEventAddress::Pio(p) => kvm_ioctls::IoEventAddress::Pio(p),
        IoEventAddress::Mmio(m) => kvm_ioctls::IoEventAddress::Mmio(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_routes_match_kvm_defaults() {
        let r = legacy_routes();
        assert_eq!(r.len(), 16 + 24);
        assert!(r.iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
        // SAFETY: every entry above is an irqchip route, so `u.irqchip` is the active member.
        let (chip, pin) = unsafe { (r[9].u.irqchip.irqchip, r[9].u.irqchip.pin) };
        assert_eq!((r[9].gsi, chip, pin), (9, KVM_IRQCHIP_PIC_SLAVE, 1));
    }

    #[test]
    fn msi_route_carries_the_message() {
        let msg = MsiMessage {
            addr_lo: 0xfee0_0000,
            addr_hi: 0,
            data: 0x4041,
        };
        let e = msi_route(30, &msg);
        // SAFETY: `msi_route` builds an MSI entry, so `u.msi` is the active member.
        let (lo, data) = unsafe { (e.u.msi.address_lo, e.u.msi.data) };
        assert_eq!(
            (e.gsi, e.type_, lo, data),
            (30, KVM_IRQ_ROUTING_MSI, 0xfee0_0000, 0x4041)
        );
    }
}
