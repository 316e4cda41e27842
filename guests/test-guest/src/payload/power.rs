//! `poweroff` (ACPI S5 through port 0x600) and `triplefault` (empty IDT + ud2).

use super::Outcome;
use crate::out::{con, fact};

pub fn poweroff() -> Outcome {
    fact("poweroff").s("acpi-s5-port-0x600").nl();
    con().s("TEST-PASS poweroff").nl();
    crate::power::poweroff()
}

pub fn triplefault() -> Outcome {
    fact("triplefault").s("empty-idt-ud2").nl();
    crate::power::triple_fault()
}
