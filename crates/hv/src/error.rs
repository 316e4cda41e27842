//! Errors of the KVM layer.

use std::io;

/// A failed KVM operation; each variant names the operation, the source is the errno.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] io::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("KVM ioctl {op} failed")]
    Ioctl {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl HvError {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HvError {
        move |e| HvError::Ioctl {
            op,
            source: io::Error::from_raw_os_error(e.errno()),
        }
    }

    /// The OS error number behind an ioctl failure, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            HvError::OpenKvm(e) | HvError::Ioctl { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }
}
