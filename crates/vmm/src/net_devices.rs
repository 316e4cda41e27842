//! Builds the network cards and the vsock device the configuration asks for and plugs them
//! into the PCI bus.

use std::sync::Arc;

use virtio::net::{Net, NetConfig, TapSpec};
use virtio::rate_limiter::{BlockGate, RateLimit, RateLimiter};
use virtio::vsock::{Vsock, VsockConfig};

use crate::io_limits::{IoLimits, NetLimiters};
use crate::net_config::{LimitSpec, NetSpec, VsockSpec};
use crate::pci::PciDevices;
use crate::VmmError;

/// The device-level limits of a [`LimitSpec`].
pub fn rate_limit(spec: &LimitSpec) -> RateLimit {
    crate::io_limits::rate_limit(&crate::io_limits::from_spec(spec))
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

/// Puts `disk` under a rate limiter with the limits of `--disk …,bw=…,iops=…` (unlimited when
/// none are given, so the API can limit it later) and returns the limiter.
pub fn limit_disk(
    disk: &mut virtio::block::Block,
    spec: &LimitSpec,
) -> Result<Arc<RateLimiter>, VmmError> {
    let limiter =
        Arc::new(RateLimiter::new(rate_limit(spec)).map_err(|e| VmmError::Device(e.to_string()))?);
    let gate = limiter.clone();
    disk.set_gate(Box::new(move || Box::new(BlockGate(gate.clone()))));
    Ok(limiter)
}

/// Adds `net0`, `net1`, … and `vsock0`; the cards' limiters go into `limits`.
pub fn add_net_devices(
    pci: &mut PciDevices,
    config: &crate::VmConfig,
    limits: &mut IoLimits,
) -> Result<(), VmmError> {
    for (i, spec) in config.nets.iter().enumerate() {
        let net = Net::new(&net_config(spec)).map_err(VmmError::Net)?;
        let id = format!("net{i}");
        let (rx, tx) = net.rate_limiters();
        limits.add_net(&id, NetLimiters { rx, tx });
        pci.add_virtio_pci(Box::new(net), &id)?;
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
    use virtio::rate_limiter::BucketConfig;

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
