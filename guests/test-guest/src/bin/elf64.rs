//! The test guest without the PVH note: loaders use the 64-bit Linux boot protocol.
#![no_std]
#![no_main]

core::arch::global_asm!(
    include_str!("../asm/common.S"),
    include_str!("../asm/elf64.S"),
    options(att_syntax)
);

// Keeps the library (its `guest_entry`, `guest_trap`, panic handler) in the link.
pub use test_guest::guest_entry;
