//! `hello`: the boot benchmark's marker. Port 0x80 gets 0x41 (timestamped by the VMM with
//! `--boot-timer`), then `TEST-GUEST-READY` goes to the console.

use super::Outcome;

pub fn run() -> Outcome {
    crate::io::outb(0x80, 0x41);
    crate::out::con().s("TEST-GUEST-READY").nl();
    Ok(())
}
