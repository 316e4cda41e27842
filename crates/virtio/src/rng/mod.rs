//! virtio-rng (entropy device, type 4): fills the guest's buffers from the host's
//! `getrandom(2)`.

mod device;
#[cfg(test)]
mod hostile_tests;

pub use device::{serve, Rng};
