//! A freestanding x86-64 guest that checks kapsel's boot contract from the inside.
//!
//! It reads `test=NAME` from its command line, runs that payload, prints `fact: key=value`
//! lines and `TEST-PASS NAME` or `TEST-FAIL NAME: reason` on COM1, then resets the machine
//! through the i8042 so the VMM exits 0 either way; the host test judges the printed lines.
#![cfg_attr(not(test), no_std)]

pub mod bootinfo;
pub mod cmdline;
pub mod cmos;
pub mod io;
pub mod mem;
pub mod out;
pub mod payload;
pub mod power;
pub mod tables;
pub mod trap;

#[cfg(not(test))]
mod rt;

use bootinfo::{BootInfo, Entry};
use mem::PhysMem;
use out::con;

/// Called by the entry assembly on the boot stack, in long mode with our GDT loaded.
/// `info` is the `hvm_start_info` (PVH, `kind` 1) or `boot_params` (64-bit, `kind` 2) address.
#[no_mangle]
pub extern "C" fn guest_entry(info: u64, kind: u32) -> ! {
    let entry = if kind == 1 { Entry::Pvh } else { Entry::Elf64 };
    static PHYS: PhysMem = PhysMem;
    let boot = BootInfo::parse(&PHYS, entry, info);
    let test = cmdline::test_name(boot.cmdline());
    trap::set_current_test(test);
    trap::install_idt();
    // The banner goes first (it shows how far a hanging guest got), except for `hello`:
    // its marker line is what the boot benchmark times, so nothing may precede it (each
    // serial byte is two VM exits).
    let early = test == b"hello";
    if !early {
        banner(entry, test);
    }
    let result = match boot.error {
        Some(e) => Err(e),
        None => payload::run(test, &boot),
    };
    if early {
        banner(entry, test);
    }
    match result {
        Ok(()) => {
            con().s("TEST-PASS ").bytes(test).nl();
        }
        Err(reason) => {
            con().s("TEST-FAIL ").bytes(test).s(": ").s(reason).nl();
        }
    }
    power::reset()
}

fn banner(entry: Entry, test: &[u8]) {
    con()
        .s("test-guest: entry=")
        .s(entry.name())
        .s(" test=")
        .bytes(test)
        .nl();
}
