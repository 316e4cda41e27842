//! `vmm`: builds one virtual machine from a [`VmConfig`] and runs it to its end.
//!
//! - [`config`]: what the user asked for, validated in one place.
//! - [`builder`]: memory, interrupt controllers, kernel, firmware tables, devices, vCPUs.
//! - [`vcpu`]: one thread per vCPU running `KVM_RUN` and dispatching exits to the buses.
//! - [`devices`]: the legacy device set and the PIO/MMIO buses.
//! - [`pci`]: PCI bus 0 and the virtio-pci devices (disks from [`disk_config`], entropy).
//! - [`restore_overrides`]: what `kapsel restore` may change for a clone (TAP, MAC, vsock, disk).
//! - [`console`]: the host side of the serial console (stdin, raw tty mode).
//! - [`balloon`]: the memory balloon option and its run-time target and statistics.
//! - [`io_limits`]: the disks' and cards' rate limiters, changed at run time by the API.
//! - [`run`]: the control loop that waits for the guest's end, signals and vCPU failures.

pub mod api;
pub mod balloon;
pub mod builder;
pub mod config;
pub mod console;
pub mod devices;
pub mod disk_backend;
pub mod disk_config;
pub mod error;
pub mod exit;
pub mod io_limits;
pub mod memory;
pub mod memory_backing;
pub mod net_config;
pub mod net_devices;
pub mod pci;
pub mod restore_overrides;
pub mod run;
pub mod seccomp;
pub mod snapshot;
pub mod state;
pub mod vcpu;
pub mod vm;

pub use config::{parse_size, VmConfig};
pub use error::VmmError;
pub use exit::VmExitReason;
pub use restore_overrides::RestoreOverrides;
pub use run::{restore_and_run, run_vm, RunOptions};
