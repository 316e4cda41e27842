//! The tests the guest can run, one file each, picked by `test=NAME`.

mod acpi;
mod bootinfo;
mod count;
mod cpuid;
mod hello;
mod idle;
mod interrupts;
mod mptable;
mod pio;
mod power;
mod rtc;
mod spin;

pub use bootinfo::check_map;

use crate::bootinfo::BootInfo;

/// A payload prints its facts and returns `Err(reason)` on a failed check.
pub type Outcome = Result<(), &'static str>;

pub fn run(test: &[u8], boot: &BootInfo) -> Outcome {
    match test {
        b"hello" => hello::run(),
        b"idle" => idle::run(),
        b"spin" => spin::run(),
        b"count" => count::run(),
        b"bootinfo" => bootinfo::run(boot),
        b"mptable" => mptable::run(),
        b"acpi" => acpi::run(boot),
        b"cpuid" => cpuid::run(),
        b"interrupts" => interrupts::run(),
        b"rtc" => rtc::run(),
        b"pio" => pio::run(),
        b"reset" => Ok(()),
        b"poweroff" => power::poweroff(),
        b"triplefault" => power::triplefault(),
        _ => Err("unknown test"),
    }
}
