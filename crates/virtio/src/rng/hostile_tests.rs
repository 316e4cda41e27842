//! A hostile driver against the entropy device: every broken chain of
//! [`hostile_scenarios`] is used (with only the bytes really written) or resets the device;
//! an avail index jumping past the queue size is NEEDS_RESET; the (empty) configuration space
//! reads as zero at every offset.

use super::device::serve;
use crate::test_util::*;

fn good() -> Vec<Desc> {
    vec![
        (BUF, 512, F_WRITE | F_NEXT, 1),
        (BUF + 0x1000, 512, F_WRITE, 0),
    ]
}

#[test]
fn every_broken_chain_is_used_or_resets_the_device() {
    for s in hostile_scenarios(&good()) {
        let mem = mem();
        let ring = RawRing::new(&mem, 0);
        ring.load(&s);
        let mut q = ring.queue();
        let irq = Recorder::default();
        if let Err(fault) = serve(&mem, &mut q, 0, &irq) {
            crate::queue_fault::report("virtio-rng", 0, &fault, &irq);
        }
        check_outcome(&s, &ring, &irq);
        if s.name == "the good chain itself" {
            assert_eq!(ring.used(), [(0, 1024)]);
        }
    }
}

#[test]
fn avail_index_jump_is_a_fault() {
    let mem = mem();
    let ring = RawRing::new(&mem, 0);
    ring.corrupt_avail_index();
    let mut q = ring.queue();
    let irq = Recorder::default();
    let fault = serve(&mem, &mut q, 0, &irq).unwrap_err();
    assert!(matches!(
        fault,
        crate::queue_fault::QueueFault::AvailIndex { pending: 17, .. }
    ));
    assert_eq!(ring.used_idx(), 0);
}

#[test]
fn config_space_is_empty_at_every_offset() {
    check_config_space(&mut super::Rng::new("rng0"), 0);
}
