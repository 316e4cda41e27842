//! Request and response bodies of kapsel's REST APIs, shared by the servers (VMM, daemon),
//! the client crate, the CLI and the tests. Plain serde types, no I/O.
//!
//! - [`vm`]: the per-VM control API served by each VMM process on its `--api-socket`.
//! - `daemon`: the host daemon's API (instances, images, networks, events).

pub mod daemon;
pub mod exec_stream;
pub mod vm;

use serde::{Deserialize, Serialize};

/// The body of every error response (4xx/5xx): one human-readable line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}
