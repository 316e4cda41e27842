//! Errors of the VMM layer. Each variant names what failed; the source says why.

use std::path::PathBuf;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot install the VMM's seccomp filter: {0}")]
    Seccomp(String),
    #[error("/dev/kvm is not available: {0}")]
    Kvm(#[source] hv::HvError),
    #[error("cannot open {what} {path}")]
    OpenFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot allocate {size} bytes of guest memory")]
    Memory {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    MemoryBacking(#[from] crate::memory_backing::BackingError),
    #[error("KVM setup failed")]
    Hv(#[from] hv::HvError),
    #[error("cannot load kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: arch::loader::LoaderError,
    },
    #[error("cannot load initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        source: arch::loader::LoaderError,
    },
    #[error("command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot write the command line into guest memory")]
    CmdlineWrite(#[source] vm_memory::GuestMemoryError),
    #[error("boot setup failed: {0}")]
    Boot(String),
    #[error("device setup failed: {0}")]
    Device(String),
    #[error("network card setup failed")]
    Net(#[source] virtio::net::NetError),
    #[error("vsock setup failed")]
    Vsock(#[source] virtio::vsock::VsockError),
    #[error(transparent)]
    Disk(#[from] virtio::block::BlockError),
    #[error("cannot create eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot spawn thread {name}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on API socket {path}")]
    ApiSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio device {id}")]
    DeviceState {
        id: String,
        #[source]
        source: pci::VirtioPciError,
    },
    #[error(transparent)]
    Override(#[from] crate::restore_overrides::OverrideError),
    #[error("cannot restore snapshot: {0}")]
    Restore(#[from] crate::snapshot::SnapshotError),
    #[error("signal setup failed")]
    Signals(#[source] std::io::Error),
}

macro_rules! boot_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for VmmError {
            fn from(e: $t) -> Self {
                VmmError::Boot(e.to_string())
            }
        }
    )*};
}
boot_error_from!(
    arch::regs::RegsError,
    arch::acpi::AcpiError,
    arch::mptable::MptableError,
    arch::boot::BootError
);
