//! The runtime's error type.

use crate::spec::SpecError;
use crate::state::Status;
use sandbox::cgroup::CgroupError;
use thiserror::Error;

/// A container operation failed.
#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("invalid container id {0:?} (1-64 of [A-Za-z0-9_.-], not starting with '.')")]
    InvalidId(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {id:?} is {status}, {op} needs it {wanted}")]
    WrongState {
        id: String,
        op: &'static str,
        status: Status,
        wanted: &'static str,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot prepare the container process")]
    Plan(#[from] crate::init::PlanError),
    #[error("cgroup setup failed")]
    Cgroup(#[from] CgroupError),
    #[error("{op} failed")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container init failed: {0}")]
    Init(String),
    #[error("container process exited before it was ready")]
    InitDied,
    #[error("state file {path} is corrupt")]
    State {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl ContainerError {
    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| ContainerError::Io { op, source }
    }

    pub(crate) fn last_os(op: impl Into<String>) -> Self {
        ContainerError::Io {
            op: op.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}
