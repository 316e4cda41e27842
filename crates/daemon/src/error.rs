//! The daemon's error type: every failure maps to one HTTP status and one line of text.

use std::path::PathBuf;

/// A request or an internal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0} is not supported yet")]
    NotSupported(&'static str),
    #[error("state database error")]
    Db(#[from] rusqlite::Error),
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VMM process")]
    Spawn(#[source] std::io::Error),
    #[error("the VMM exited during start ({0})")]
    StartFailed(String),
    #[error("cgroup setup failed")]
    Cgroup(#[from] sandbox::cgroup::CgroupError),
    #[error("{0}")]
    Vmm(String),
    #[error("network setup failed: {0}")]
    Network(String),
    #[error("container")]
    Container(#[from] container::ContainerError),
    #[error("disk image")]
    Disk(#[from] disk::DiskError),
}

impl DaemonError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            DaemonError::BadRequest(_) => 400,
            DaemonError::NotFound { .. } => 404,
            DaemonError::Conflict(_) => 409,
            DaemonError::MethodNotAllowed(_) => 405,
            DaemonError::NotSupported(_) => 501,
            DaemonError::StartFailed(_) => 422,
            DaemonError::Container(container::ContainerError::WrongState { .. }) => 409,
            DaemonError::Disk(disk::DiskError::Exists { .. }) => 409,
            _ => 500,
        }
    }

    /// The error and its causes as one line.
    pub fn line(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = s.source();
        }
        line
    }

    pub fn not_found(kind: &'static str, name: &str) -> Self {
        DaemonError::NotFound {
            kind,
            name: name.to_string(),
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DaemonError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(DaemonError::BadRequest("x".into()).status(), 400);
        assert_eq!(DaemonError::not_found("instance", "a").status(), 404);
        assert_eq!(DaemonError::Conflict("x".into()).status(), 409);
        assert_eq!(DaemonError::NotSupported("pause").status(), 501);
    }

    #[test]
    fn line_chains_causes() {
        let e = DaemonError::io(
            "read",
            "/x",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.line(), "cannot read /x: gone");
    }
}
