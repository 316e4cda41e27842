//! virtio-blk (type 2) on a raw image file.
//!
//! - [`request`]: turns a descriptor chain into a checked [`Request`] (or says why not).
//! - [`io`]: the image file: reads and writes straight into guest memory, flush, discard,
//!   write-zeroes.
//! - [`worker`]: serves the request queue on the device's thread; the [`RequestGate`] seam is
//!   where a rate limiter admits or defers each request.
//! - [`device`]: the [`crate::VirtioDevice`] face: features, configuration space, activation,
//!   and the run-time switch to another image ([`Block::replace_disk`]).

pub mod device;
#[cfg(test)]
mod hostile_tests;
pub mod io;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod replace_tests;
pub mod request;
pub mod worker;

pub use device::{Block, BlockConfig, BlockError, ReplaceError};
pub use io::DiskFile;
pub use request::{Request, RequestError, RequestType};
pub use worker::{RequestGate, Unlimited};

pub const TYPE_BLOCK: u32 = 2;
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Length of the serial number answered to GET_ID.
pub const ID_BYTES: usize = 20;

pub const STATUS_OK: u8 = 0;
pub const STATUS_IOERR: u8 = 1;
pub const STATUS_UNSUPP: u8 = 2;
