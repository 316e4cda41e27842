//! Builds the network cards and the vsock device the configuration asks for and plugs them
//! into the PCI bus.

use virtio::net::{Net, NetConfig, TapSpec};
use virtio::rate_limiter::{BucketConfig, RateLimit};
use virtio::vsock::{Vsock, VsockConfig};

use crate::net_config::{LimitSpec, NetSpec, VsockSpec};
use crate::pci::PciDevices;
use crate::VmmError;

fn bucket(rate: Option<u64>, burst: Option<u64>) -> Option<BucketConfig> {
    rate.map(|r| {
        let mut b = BucketConfig::with_rate(r);
        if let Some(burst) = burst {
            b.burst = burst;
        }
        b
    })
}

/// The device-level limits of a [`LimitSpec`].
pub fn rate_limit(spec: &LimitSpec) -> RateLimit {
    RateLimit {
        bytes: bucket(spec.bytes_per_sec, spec.bytes_burst),
        ops: bucket(spec.ops_per_sec, spec.ops_burst),
    }
}

/// The device configuration of one `--net`.
pub fn net_config(spec: &NetSpec) -> NetConfig {
    NetConfig {
        tap: spec.tap.clone().map_or(TapSpec::Auto, TapSpec::Named),
        mac: spec.mac,
        host_ip: spec.host_ip,
        rx_limit: rate_limit(&spec.rx),
        tx_limit: rate_limit(&spec.tx),
    }
}

fn vsock_config(spec: &VsockSpec) -> VsockConfig {
    VsockConfig {
        cid: spec.cid,
        socket: spec.socket.clone(),
    }
}

/// Puts `disk` under the limits of `--disk …,bw=…,iops=…` (nothing when unlimited).
pub fn limit_disk(
    mut disk: virtio::block::Block,
    spec: &LimitSpec,
) -> Result<virtio::block::Block, VmmError> {
    if spec.is_unlimited() {
        return Ok(disk);
    }
    let limiter = std::sync::Arc::new(
        virtio::rate_limiter::RateLimiter::new(rate_limit(spec))
            .map_err(|e| VmmError::Device(e.to_string()))?,
    );
    disk.set_gate(Box::new(move || {
        Box::new(virtio::rate_limiter::BlockGate(limiter.clone()))
    }));
    Ok(disk)
}

/// Adds `net0`, `net1`, … and `vsock0`.
pub fn add_net_devices(pci: &mut PciDevices, config: &crate::VmConfig) -> Result<(), VmmError> {
    for (i, spec) in config.nets.iter().enumerate() {
        let net = Net::new(&net_config(spec)).map_err(VmmError::Net)?;
        pci.add_virtio_pci(Box::new(net), &format!("net{i}"))?;
    }
    if let Some(spec) = &config.vsock {
        let vsock = Vsock::new(&vsock_config(spec)).map_err(VmmError::Vsock)?;
        pci.add_virtio_pci(Box::new(vsock), "vsock0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_to_buckets() {
        let spec = crate::net_config::parse_net("tap=auto,rx_bw=10M,tx_ops=100,ops_burst=5")
            .expect("parse");
        let c = net_config(&spec);
        assert_eq!(c.tap, TapSpec::Auto);
        assert_eq!(c.rx_limit.bytes, Some(BucketConfig::with_rate(10 << 20)));
        assert_eq!(c.tx_limit.ops.map(|b| (b.rate, b.burst)), Some((100, 5)));
        assert!(c.tx_limit.bytes.is_none());
        assert!(c.rx_limit.ops.is_none(), "a burst alone sets no limit");
    }
}
