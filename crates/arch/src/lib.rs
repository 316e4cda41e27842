//! `arch`: x86_64 machine setup for direct kernel boot.
//!
//! Everything a guest finds in memory and registers at its first instruction is decided here:
//! the physical memory map ([`layout`], [`memory`]), the kernel and initrd placement
//! ([`loader`]), the boot protocol structures ([`boot`]), firmware tables ([`mptable`],
//! [`acpi`]), CPUID ([`cpuid`]) and the initial vCPU state ([`regs`], [`gdt`], [`paging`]).
//! Only [`hv`] types are used to reach KVM.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod mptable;
pub mod paging;
pub mod regs;

/// Guest memory as used throughout kapsel.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
