//! `sandbox`: the confinement library shared by the container runtime and VMM jailing.
//!
//! - [`syscall`]: every privileged call goes through the [`Syscall`] trait; [`LinuxSyscall`]
//!   is the real one (allocation-free, so it is safe between `fork` and `exec`) and
//!   [`RecordingSyscall`] records calls so namespace and rootfs logic is unit-tested without root.
//! - [`namespace`]: the namespace kinds and their clone flags.
//! - [`cgroup`]: one [`cgroup::CgroupManager`] trait, backends for cgroup v1 and v2, detected
//!   per controller from `/proc/self/mountinfo`.
//! - [`caps`], [`seccomp`], [`rlimit`]: capability sets, the default seccomp profile, rlimits.

pub mod caps;
pub mod cgroup;
pub mod namespace;
pub mod rlimit;
pub mod seccomp;
pub mod syscall;

pub use syscall::{Errno, LinuxSyscall, RecordingSyscall, Syscall};
