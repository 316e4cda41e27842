//! Ending the machine: i8042 reset, ACPI S5 power-off, triple fault.

use crate::io::outb;
use crate::out::con;

/// Pulses reset through the i8042 (0xFE to port 0x64); kapsel exits 0. If the VM is still
/// running about two seconds later, says so and triple-faults so the host sees exit 3.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    crate::cmos::wait_seconds(2);
    con()
        .s("test-guest: i8042 reset did not stop the VM; forcing a triple fault")
        .nl();
    triple_fault()
}

/// ACPI power-off: SLP_TYP=5 | SLP_EN to the sleep control register at port 0x600.
pub fn poweroff() -> ! {
    outb(0x600, 0x34);
    crate::cmos::wait_seconds(2);
    con()
        .s("TEST-FAIL ")
        .bytes(crate::trap::current_test().as_bytes())
        .s(": still running after the ACPI S5 write to port 0x600")
        .nl();
    triple_fault()
}

/// Loads an empty IDT and raises #UD: #UD -> #GP -> #DF -> shutdown. (`ud2`, not `int3`:
/// kvm_pvm emulates the instructions right after the trapping `lidt`, and KVM's emulator
/// cannot deliver a software interrupt in 64-bit mode, so `int3` ends as an emulation
/// failure instead of a triple fault.)
pub fn triple_fault() -> ! {
    crate::trap::load_empty_idt();
    // SAFETY: deliberately ends the machine; nothing runs after this.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) }
    crate::io::halt_forever()
}
