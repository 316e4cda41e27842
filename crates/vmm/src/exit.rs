//! Why a VM ended, and the process exit code for each reason.

use std::fmt;

/// Why the VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExitReason {
    /// The guest powered off (ACPI S5 or a paravirtual shutdown request).
    PowerOff,
    /// The guest reset the machine (i8042, ACPI reset register); kapsel ends on reboot.
    Reset,
    /// The host asked kapsel to stop (SIGINT/SIGTERM, console escape).
    Stopped,
    /// Triple fault: the CPU shut down. `registers` summarizes where the guest was (rip,
    /// paging and descriptor tables), so an intermittent fault leaves something to debug.
    TripleFault { vcpu: u8, registers: String },
    /// KVM could not run the guest (emulation failure, failed entry, unknown exit).
    KvmError { vcpu: u8, detail: String },
    /// The guest reported a crash (`KVM_SYSTEM_EVENT_CRASH`).
    GuestCrash { vcpu: u8 },
}

/// Process exit codes, one per class of end. 1 and 2 are errors before boot and bad usage.
pub mod code {
    pub const OK: u8 = 0;
    pub const CONFIG_ERROR: u8 = 1;
    pub const TRIPLE_FAULT: u8 = 3;
    pub const KVM_ERROR: u8 = 4;
    pub const GUEST_CRASH: u8 = 5;
    pub const STOPPED_BY_SIGNAL: u8 = 0;
}

impl VmExitReason {
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExitReason::PowerOff | VmExitReason::Reset => code::OK,
            VmExitReason::Stopped => code::STOPPED_BY_SIGNAL,
            VmExitReason::TripleFault { .. } => code::TRIPLE_FAULT,
            VmExitReason::KvmError { .. } => code::KVM_ERROR,
            VmExitReason::GuestCrash { .. } => code::GUEST_CRASH,
        }
    }

    /// Whether this end is a failure worth a line on stderr.
    pub fn is_failure(&self) -> bool {
        self.exit_code() != code::OK
    }
}

impl fmt::Display for VmExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExitReason::PowerOff => write!(f, "guest powered off"),
            VmExitReason::Reset => write!(f, "guest rebooted"),
            VmExitReason::Stopped => write!(f, "stopped on request"),
            VmExitReason::TripleFault { vcpu, registers } => {
                write!(f, "guest triple fault on vCPU {vcpu} (CPU shutdown)")?;
                if !registers.is_empty() {
                    write!(f, " at {registers}")?;
                }
                Ok(())
            }
            VmExitReason::KvmError { vcpu, detail } => {
                write!(f, "KVM cannot run vCPU {vcpu}: {detail}")
            }
            VmExitReason::GuestCrash { vcpu } => write!(f, "guest reported a crash on vCPU {vcpu}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_have_distinct_nonzero_codes() {
        let fails = [
            VmExitReason::TripleFault {
                vcpu: 0,
                registers: String::new(),
            },
            VmExitReason::KvmError {
                vcpu: 0,
                detail: String::new(),
            },
            VmExitReason::GuestCrash { vcpu: 0 },
        ];
        let mut codes: Vec<u8> = fails.iter().map(|r| r.exit_code()).collect();
        assert!(codes.iter().all(|c| *c > code::CONFIG_ERROR));
        codes.dedup();
        assert_eq!(codes.len(), fails.len());
        assert_eq!(VmExitReason::PowerOff.exit_code(), 0);
        assert_eq!(VmExitReason::Reset.exit_code(), 0);
    }
}
