//! The VM lifecycle state machine: one transition function, checked for every pair.

pub use api::vm::VmState;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VM is {from}; it cannot go to {to}")]
pub struct StateError {
    pub from: VmState,
    pub to: VmState,
}

/// Whether a VM may go from `from` to `to`.
pub fn valid_transition(from: VmState, to: VmState) -> bool {
    use VmState::*;
    matches!(
        (from, to),
        (Created, Running)
            | (Created, Paused)
            | (Created, Shutdown)
            | (Running, Paused)
            | (Running, ShuttingDown)
            | (Running, Shutdown)
            | (Paused, Running)
            | (Paused, ShuttingDown)
            | (Paused, Shutdown)
            | (ShuttingDown, Shutdown)
    )
}

/// Moves `state` to `to` if the transition is valid.
pub fn transition(state: &mut VmState, to: VmState) -> Result<(), StateError> {
    if valid_transition(*state, to) {
        *state = to;
        Ok(())
    } else {
        Err(StateError { from: *state, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmState::*;

    #[test]
    fn every_pair_is_decided() {
        let allowed = [
            (Created, Running),
            (Created, Paused),
            (Created, Shutdown),
            (Running, Paused),
            (Running, ShuttingDown),
            (Running, Shutdown),
            (Paused, Running),
            (Paused, ShuttingDown),
            (Paused, Shutdown),
            (ShuttingDown, Shutdown),
        ];
        for from in VmState::ALL {
            for to in VmState::ALL {
                let mut s = from;
                let ok = transition(&mut s, to).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from} -> {to}");
                assert_eq!(s, if ok { to } else { from });
            }
        }
    }

    #[test]
    fn shutdown_is_final() {
        for to in VmState::ALL {
            assert!(!valid_transition(Shutdown, to));
        }
    }
}
