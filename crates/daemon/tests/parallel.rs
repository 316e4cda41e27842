//! Many guests at once: 20 launches in parallel all come up, and `list` agrees with the
//! processes that really run.
#![allow(clippy::unwrap_used)]

mod common;

use api::daemon::RestartPolicy;
use common::{alive, request, require_kvm, running, TestDaemon};

#[test]
fn twenty_parallel_launches_all_run_and_list_agrees() {
    require_kvm();
    let d = TestDaemon::start();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let c = d.client();
            std::thread::spawn(move || {
                c.create(&request(&format!("g{i}"), "idle", RestartPolicy::No))
            })
        })
        .collect();
    for h in handles {
        let inst = h.join().unwrap().unwrap();
        assert!(running(&inst), "{inst:?}");
    }
    let list = d.client().list().unwrap();
    assert_eq!(list.len(), 20);
    let mut pids: Vec<i32> = list.iter().map(|i| i.pid.unwrap()).collect();
    assert!(list.iter().all(running));
    assert!(pids.iter().all(|&p| alive(p)));
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 20);
    assert_eq!(d.client().host().unwrap().running, 20);

    // Stopping them all in parallel leaves a consistent, all-stopped list.
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let c = d.client();
            std::thread::spawn(move || c.stop(&format!("g{i}"), false))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let list = d.client().list().unwrap();
    assert!(list.iter().all(|i| i.pid.is_none()));
    assert!(pids.iter().all(|&p| !alive(p)));
}
