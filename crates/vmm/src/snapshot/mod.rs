//! VM snapshots: a state file (vCPUs, in-kernel irqchips/PIT/clock, devices, configuration)
//! and a memory file, written atomically into a directory.
//!
//! Writing: both files go to temporary names, are fsynced, then renamed — memory first, the
//! state file last, so a directory holds an acceptable `state` only once everything is on
//! disk. Any failure removes the temporary files; the VM itself is untouched. Restoring maps
//! the memory file copy-on-write (`MAP_PRIVATE`), so pages load on demand and one snapshot
//! can back many clones.

pub mod format;
mod memory_file;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use arch::GuestMemoryMmap;
use serde::{Deserialize, Serialize};

pub use memory_file::{MemoryLayout, MemoryRegionInfo};

use crate::devices::LegacyDevicesState;
use crate::VmConfig;

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

/// Everything but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub config: VmConfig,
    pub vm: hv::VmState,
    pub vcpus: Vec<hv::VcpuState>,
    pub devices: LegacyDevicesState,
    /// The virtio devices (with their PCI transports), in slot order.
    #[serde(default)]
    pub virtio: Vec<crate::pci::VirtioSnapshot>,
    pub memory: MemoryLayout,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0} already holds a snapshot; choose an empty directory")]
    Exists(PathBuf),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        source: format::FormatError,
    },
    #[error("{path}: cannot decode the VM state: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot encode the VM state")]
    Encode(#[source] serde_json::Error),
    #[error("memory file {path} is {found} bytes, the snapshot needs {expected}")]
    MemorySize {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("cannot map the memory file")]
    Map(String),
    #[error("vCPU state: {0}")]
    Vcpu(String),
    #[error("KVM state")]
    Hv(#[from] hv::HvError),
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn create_new(path: &Path) -> Result<File, SnapshotError> {
    let _ = fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err(path))
}

/// Sizes of what a snapshot wrote.
#[derive(Debug, Clone, Copy)]
pub struct WrittenSnapshot {
    pub state_bytes: u64,
    pub memory_bytes: u64,
}

/// Writes `state` and `mem` into `dir` atomically (see the module docs).
pub fn write_snapshot(
    dir: &Path,
    mut state: SnapshotState,
    mem: &GuestMemoryMmap,
) -> Result<WrittenSnapshot, SnapshotError> {
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    let state_path = dir.join(STATE_FILE);
    if state_path.exists() {
        return Err(SnapshotError::Exists(dir.to_path_buf()));
    }
    let mem_tmp = dir.join(".memory.tmp");
    let state_tmp = dir.join(".state.tmp");
    let result = (|| {
        let mut mem_file = create_new(&mem_tmp)?;
        state.memory = memory_file::dump(mem, &mut mem_file).map_err(write_err(&mem_tmp))?;
        mem_file.sync_all().map_err(write_err(&mem_tmp))?;
        let payload = serde_json::to_vec(&state).map_err(SnapshotError::Encode)?;
        let bytes = format::encode(&payload);
        let mut state_file = create_new(&state_tmp)?;
        state_file
            .write_all(&bytes)
            .map_err(write_err(&state_tmp))?;
        state_file.sync_all().map_err(write_err(&state_tmp))?;
        fs::rename(&mem_tmp, dir.join(MEMORY_FILE)).map_err(write_err(&mem_tmp))?;
        fs::rename(&state_tmp, &state_path).map_err(write_err(&state_tmp))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(dir))?;
        Ok(WrittenSnapshot {
            state_bytes: bytes.len() as u64,
            memory_bytes: state.memory.file_size,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&mem_tmp);
        let _ = fs::remove_file(&state_tmp);
    }
    result
}

/// Reads and checks a snapshot's state file; returns it with the opened memory file.
pub fn read_snapshot(dir: &Path) -> Result<(SnapshotState, File), SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Read { path, source }
    };
    let meta = fs::metadata(&state_path).map_err(read_err(&state_path))?;
    if meta.len() > format::MAX_STATE_FILE {
        return Err(SnapshotError::Format {
            path: state_path,
            source: format::FormatError::TooLarge,
        });
    }
    let bytes = fs::read(&state_path).map_err(read_err(&state_path))?;
    let payload = format::decode(&bytes).map_err(|source| SnapshotError::Format {
        path: state_path.clone(),
        source,
    })?;
    let state: SnapshotState =
        serde_json::from_slice(payload).map_err(|source| SnapshotError::Decode {
            path: state_path.clone(),
            source,
        })?;
    let mem_path = dir.join(MEMORY_FILE);
    let mem_file = File::open(&mem_path).map_err(read_err(&mem_path))?;
    let found = mem_file.metadata().map_err(read_err(&mem_path))?.len();
    if found != state.memory.file_size {
        return Err(SnapshotError::MemorySize {
            path: mem_path,
            expected: state.memory.file_size,
            found,
        });
    }
    Ok((state, mem_file))
}

/// Maps the memory file of a snapshot as private, copy-on-write guest memory.
pub fn map_memory(file: &File, layout: &MemoryLayout) -> Result<GuestMemoryMmap, SnapshotError> {
    memory_file::map(file, layout).map_err(SnapshotError::Map)
}
