//! `container`: OS-level virtualization on the `sandbox` crate.
//!
//! A [`Container`] is created from a [`ContainerConfig`] (built by hand or from an OCI bundle
//! through [`spec`]) and then started, signalled, paused, waited for and deleted. Its first
//! process is prepared by [`init`]: the plan is computed in the parent, the child only makes
//! syscalls through the `sandbox` seam.

pub mod config;
pub mod console;
mod container;
mod error;
pub mod foreground;
pub mod image;
pub mod init;
pub mod oci;
pub mod process;
pub mod signals;
pub mod spec;
pub mod state;

pub use config::{ContainerConfig, ProcessConfig, RootfsSource};
pub use container::{Container, CreateOptions, DEFAULT_STATE_ROOT};
pub use error::ContainerError;
pub use process::Stdio;
pub use state::{OciState, Status};
