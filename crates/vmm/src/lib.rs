//! `vmm`: builds one virtual machine from a [`VmConfig`] and runs it to its end.
//!
//! - [`config`]: what the user asked for, validated in one place.
//! - [`builder`]: memory, interrupt controllers, kernel, firmware tables, devices, vCPUs.
//! - [`vcpu`]: one thread per vCPU running `KVM_RUN` and dispatching exits to the buses.
//! - [`devices`]: the legacy device set and the PIO/MMIO buses.
//! - [`console`]: the host side of the serial console (stdin, raw tty mode).
//! - [`run`]: the control loop that waits for the guest's end, signals and vCPU failures.

pub mod builder;
pub mod config;
pub mod console;
pub mod devices;
pub mod error;
pub mod exit;
pub mod memory;
pub mod run;
pub mod vcpu;

pub use config::{parse_size, VmConfig};
pub use error::VmmError;
pub use exit::VmExitReason;
pub use run::run_vm;
