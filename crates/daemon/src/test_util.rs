//! Fixtures for the unit tests of this crate.

use api::daemon::{Instance, InstanceConfig, InstanceStatus};

/// One vCPU, 64 MiB, default restart policy, no limits, networks or command.
pub fn config() -> InstanceConfig {
    InstanceConfig {
        cpus: 1,
        memory_mib: 64,
        cmdline: String::new(),
        restart: Default::default(),
        autostart: false,
        cpu_weight: None,
        cpu_cap_percent: None,
        cpuset: None,
        memory_limit_mib: None,
        memory_backing: String::new(),
        disk_limits: None,
        net_limits: None,
        balloon_mib: None,
        networks: Vec::new(),
        command: Vec::new(),
        pids_limit: None,
    }
}

/// A stopped VM instance `name` of `image` with `config`, never run.
pub fn instance(name: &str, image: &str, config: InstanceConfig) -> Instance {
    Instance {
        name: name.into(),
        image: image.into(),
        kind: Default::default(),
        status: InstanceStatus::Stopped,
        config,
        pid: None,
        restarts: 0,
        created_at: 0,
        last_exit: None,
        console: None,
        disk: None,
        address: None,
    }
}
