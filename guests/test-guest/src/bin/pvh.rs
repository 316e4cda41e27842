//! The test guest with the PVH ELF note: loaders enter it in 32-bit protected mode.
#![no_std]
#![no_main]

core::arch::global_asm!(
    include_str!("../asm/common.S"),
    include_str!("../asm/pvh.S"),
    options(att_syntax)
);

// Keeps the library (its `guest_entry`, `guest_trap`, panic handler) in the link.
pub use test_guest::guest_entry;
