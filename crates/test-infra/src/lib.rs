//! Helpers for kapsel's integration tests that boot real Linux guests.
//!
//! - [`guest_dir`]: the directory with the test guests (`scripts/guest-artifacts.sh`).
//! - [`debian_image`]: the Debian root image (`scripts/guest-artifacts.sh --debian-image`).
//! - [`kapsel_static_bin`]: a statically linked `kapsel`, built once, to copy into the test bed.
//! - [`TestBed`]: runs a shell scenario inside the nested test bed (`scripts/testbed.sh`).
//! - [`scenario`]: a shell prelude to boot L2 guests with kapsel, and the parser of its output.
//! - [`test_guest`]: the no_std test guest ELFs for tests directly on `/dev/kvm`.
//! - [`GuestReport`]: the `guest: key=value …` lines the test guests print.
//!
//! Everything here fails loudly: a test bed that cannot start panics the test, it never skips.

mod error;
mod guest_report;
mod paths;
pub mod scenario;
mod static_bin;
mod test_guest;
mod testbed;

pub use error::Error;
pub use guest_report::{GuestReport, VirtioDevice};
pub use paths::{debian_image, guest_dir, repo_root, try_guest_dir};
pub use static_bin::{kapsel_static_bin, try_kapsel_static_bin};
pub use test_guest::{require_kvm, test_guest, TestGuestEntry};
pub use testbed::{TestBed, TestBedRun};
