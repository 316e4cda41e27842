//! The per-container state file and the lifecycle state machine.

use crate::error::ContainerError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Namespaces and root filesystem ready, process waiting for `start`.
    Created,
    Running,
    /// Frozen through the cgroup freezer.
    Paused,
    Stopped,
}

impl Status {
    /// Whether `op` is allowed in this status.
    pub fn allows(self, op: Op) -> bool {
        use Status::*;
        match op {
            Op::Start => self == Created,
            Op::Kill => matches!(self, Created | Running | Paused),
            Op::Pause => self == Running,
            Op::Resume => self == Paused,
            Op::Exec => self == Running,
            Op::Delete => self == Stopped,
        }
    }
}

/// Lifecycle operations checked against [`Status::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Kill,
    Pause,
    Resume,
    Exec,
    Delete,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What is kept on disk about a container (`<root>/<id>/state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub format: u32,
    pub id: String,
    pub pid: i32,
    /// Start time of `pid` (clock ticks since boot) so a reused pid is not mistaken for it.
    pub pid_start: u64,
    pub bundle: Option<PathBuf>,
    pub rootfs: PathBuf,
    /// Whether `rootfs` is an overlay over image layers (upper dir in the state dir).
    pub overlay: bool,
    /// The upper directory when it lives outside the state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<PathBuf>,
    pub cgroups_path: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub paused: bool,
    pub annotations: BTreeMap<String, String>,
}

/// The OCI `state` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
}

pub const STATE_FORMAT: u32 = 1;
const MAX_STATE_SIZE: u64 = 1 << 20;

impl StateFile {
    /// Writes atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), ContainerError> {
        let tmp = dir.join("state.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|source| ContainerError::State {
            path: tmp.display().to_string(),
            source,
        })?;
        std::fs::write(&tmp, data).map_err(ContainerError::io("write state"))?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(ContainerError::io("rename state"))
    }

    /// Reads `dir/state.json`.
    pub fn load(dir: &Path, id: &str) -> Result<StateFile, ContainerError> {
        let path = dir.join("state.json");
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(id.to_string()))
            }
            Err(e) => return Err(ContainerError::io("stat state")(e)),
        };
        if meta.len() > MAX_STATE_SIZE {
            return Err(ContainerError::Init(format!(
                "{} is too large",
                path.display()
            )));
        }
        let data = std::fs::read(&path).map_err(ContainerError::io("read state"))?;
        serde_json::from_slice(&data).map_err(|source| ContainerError::State {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Start time (field 22 of `/proc/PID/stat`) and whether the process is a zombie.
pub fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_op_pair_follows_the_lifecycle() {
        use Op::*;
        use Status::*;
        let allowed = [
            (Created, Start),
            (Created, Kill),
            (Running, Kill),
            (Paused, Kill),
            (Running, Pause),
            (Paused, Resume),
            (Running, Exec),
            (Stopped, Delete),
        ];
        for s in [Created, Running, Paused, Stopped] {
            for op in [Start, Kill, Pause, Resume, Exec, Delete] {
                assert_eq!(s.allows(op), allowed.contains(&(s, op)), "{s} {op:?}");
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateFile {
            format: STATE_FORMAT,
            id: "a".into(),
            pid: 42,
            pid_start: 7,
            bundle: Some("/b".into()),
            rootfs: "/b/rootfs".into(),
            overlay: false,
            upper: None,
            cgroups_path: "/kapsel/a".into(),
            created: 1,
            paused: false,
            annotations: BTreeMap::new(),
        };
        s.save(tmp.path()).unwrap();
        assert_eq!(StateFile::load(tmp.path(), "a").unwrap(), s);
        assert!(matches!(
            StateFile::load(&tmp.path().join("nope"), "x"),
            Err(ContainerError::NotFound(_))
        ));
    }

    #[test]
    fn own_process_start_time_is_readable() {
        let (start, zombie) = proc_start(std::process::id() as i32).unwrap();
        assert!(start > 0);
        assert!(!zombie);
    }
}
