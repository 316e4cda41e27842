//! The `--net` and `--vsock` options and the I/O limit keys (`bw=`, `iops=`, …) shared with
//! `--disk`: parsing into serializable specs, checked here so a bad option is one clear line.
//!
//! ```text
//! --net tap=NAME|auto[,mac=52:54:00:12:34:56][,ip=10.0.2.1/24][,bw=10M][,ops=1000]
//!       [,rx_bw=…][,tx_bw=…][,rx_ops=…][,tx_ops=…][,bw_burst=…][,ops_burst=…]
//! --vsock cid=N,socket=PATH
//! --disk …[,bw=10M][,iops=500][,bw_burst=…][,iops_burst=…]
//! ```
//! Rates are per second: a number with an optional K, M or G suffix (binary), optionally
//! followed by `B`, `iB` and `/s` (`10M`, `10MiB/s`, `1500`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("--{opt}: expected KEY=VALUE, got '{item}'")]
    NotKeyValue { opt: &'static str, item: String },
    #[error("--{opt}: unknown key '{key}' (known: {known})")]
    UnknownKey {
        opt: &'static str,
        key: String,
        known: &'static str,
    },
    #[error("--{opt}: '{key}' given twice")]
    Duplicate { opt: &'static str, key: String },
    #[error("--{opt}: missing '{key}='")]
    Missing {
        opt: &'static str,
        key: &'static str,
    },
    #[error("--{opt}: invalid {key} '{value}': {why}")]
    BadValue {
        opt: &'static str,
        key: String,
        value: String,
        why: &'static str,
    },
}

/// Token-bucket limits of one direction of one device; `None` fields are unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    pub bytes_per_sec: Option<u64>,
    pub bytes_burst: Option<u64>,
    pub ops_per_sec: Option<u64>,
    pub ops_burst: Option<u64>,
}

impl LimitSpec {
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec.is_none() && self.ops_per_sec.is_none()
    }
}

/// One network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// The TAP's name; `None` for `tap=auto` (kapsel creates `kapselN`).
    pub tap: Option<String>,
    pub mac: Option<[u8; 6]>,
    /// Address and prefix length for the host side of the TAP.
    pub host_ip: Option<(Ipv4Addr, u8)>,
    /// Host → guest.
    pub rx: LimitSpec,
    /// Guest → host.
    pub tx: LimitSpec,
}

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSpec {
    pub cid: u64,
    pub socket: PathBuf,
}

/// Splits `a=1,b=2` into pairs, rejecting items without `=` and repeated keys.
pub fn key_values<'a>(
    opt: &'static str,
    s: &'a str,
) -> Result<Vec<(&'a str, &'a str)>, OptionError> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(OptionError::NotKeyValue {
                opt,
                item: item.into(),
            });
        };
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(OptionError::Duplicate { opt, key: k.into() });
        }
        out.push((k, v));
    }
    Ok(out)
}

fn bad(opt: &'static str, key: &str, value: &str, why: &'static str) -> OptionError {
    OptionError::BadValue {
        opt,
        key: key.into(),
        value: value.into(),
        why,
    }
}

/// Parses a per-second rate such as `10M`, `10MiB/s`, `512K`, `1500`.
pub fn parse_rate(opt: &'static str, key: &str, value: &str) -> Result<u64, OptionError> {
    let why = "expected a number with an optional K, M or G suffix, e.g. 10M";
    let t = value.trim().trim_end_matches("/s");
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad(opt, key, value, why))?;
    let unit: u64 = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(bad(opt, key, value, why)),
    };
    let rate = n
        .checked_mul(unit)
        .ok_or_else(|| bad(opt, key, value, "too large"))?;
    if rate == 0 {
        return Err(bad(opt, key, value, "must be above zero"));
    }
    Ok(rate)
}

/// Applies one limit key shared by disks and NICs (`bw`, `iops`/`ops`, `*_burst`).
/// Returns false when `key` is not a limit key.
pub fn apply_limit_key(
    opt: &'static str,
    limit: &mut LimitSpec,
    key: &str,
    value: &str,
) -> Result<bool, OptionError> {
    let rate = || parse_rate(opt, key, value);
    match key {
        "bw" => limit.bytes_per_sec = Some(rate()?),
        "bw_burst" => limit.bytes_burst = Some(rate()?),
        "iops" | "ops" => limit.ops_per_sec = Some(rate()?),
        "iops_burst" | "ops_burst" => limit.ops_burst = Some(rate()?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_mac(value: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = value.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(mac)
}

fn parse_cidr(value: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = value.split_once('/').unwrap_or((value, "24"));
    let prefix: u8 = prefix.parse().ok()?;
    if prefix == 0 || prefix > 32 {
        return None;
    }
    Some((ip.parse().ok()?, prefix))
}

/// Applies one limit key of a network card: `rx_`/`tx_` prefixed for one direction, bare for
/// both. Returns false when `key` is not a limit key.
fn apply_net_limit_key(
    opt: &'static str,
    rx: &mut LimitSpec,
    tx: &mut LimitSpec,
    key: &str,
    value: &str,
) -> Result<bool, OptionError> {
    if let Some(k) = key.strip_prefix("rx_") {
        apply_limit_key(opt, rx, k, value)
    } else if let Some(k) = key.strip_prefix("tx_") {
        apply_limit_key(opt, tx, k, value)
    } else {
        Ok(apply_limit_key(opt, rx, key, value)? && apply_limit_key(opt, tx, key, value)?)
    }
}

/// Parses the limit keys of a disk alone (`bw=20M,iops=500,…`), as `kapsel vm limits` takes
/// them; an empty string is "no limits".
pub fn parse_disk_limits(opt: &'static str, s: &str) -> Result<LimitSpec, OptionError> {
    let mut limit = LimitSpec::default();
    for (key, value) in key_values(opt, s)? {
        if !apply_limit_key(opt, &mut limit, key, value)? {
            return Err(OptionError::UnknownKey {
                opt,
                key: key.into(),
                known: "bw, iops, bw_burst, iops_burst",
            });
        }
    }
    Ok(limit)
}

/// Parses the limit keys of a network card alone (`rx_bw=10M,tx_ops=100,…`): returns
/// (rx, tx); an empty string is "no limits".
pub fn parse_net_limits(opt: &'static str, s: &str) -> Result<(LimitSpec, LimitSpec), OptionError> {
    let (mut rx, mut tx) = (LimitSpec::default(), LimitSpec::default());
    for (key, value) in key_values(opt, s)? {
        if !apply_net_limit_key(opt, &mut rx, &mut tx, key, value)? {
            return Err(OptionError::UnknownKey {
                opt,
                key: key.into(),
                known: "bw, ops, rx_bw, tx_bw, rx_ops, tx_ops, bw_burst, ops_burst (and rx_/tx_ bursts)",
            });
        }
    }
    Ok((rx, tx))
}

const NET_KEYS: &str = "tap, mac, ip, bw, ops, rx_bw, tx_bw, rx_ops, tx_ops, bw_burst, ops_burst";

/// Parses one `--net` value.
pub fn parse_net(s: &str) -> Result<NetSpec, OptionError> {
    const OPT: &str = "net";
    let mut tap: Option<Option<String>> = None;
    let mut spec = NetSpec {
        tap: None,
        mac: None,
        host_ip: None,
        rx: LimitSpec::default(),
        tx: LimitSpec::default(),
    };
    for (key, value) in key_values(OPT, s)? {
        match key {
            "tap" => {
                if value == "auto" {
                    tap = Some(None);
                } else {
                    let ok = !value.is_empty()
                        && value.len() <= 15
                        && !value
                            .chars()
                            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '%');
                    if !ok {
                        return Err(bad(
                            OPT,
                            key,
                            value,
                            "1 to 15 characters without '/', ':', '%' or spaces, or 'auto'",
                        ));
                    }
                    tap = Some(Some(value.into()));
                }
            }
            "mac" => {
                let mac = parse_mac(value)
                    .ok_or_else(|| bad(OPT, key, value, "expected aa:bb:cc:dd:ee:ff"))?;
                if mac[0] & 1 != 0 {
                    return Err(bad(OPT, key, value, "multicast addresses are not allowed"));
                }
                spec.mac = Some(mac);
            }
            "ip" => {
                spec.host_ip = Some(
                    parse_cidr(value)
                        .ok_or_else(|| bad(OPT, key, value, "expected an IPv4 address/prefix"))?,
                );
            }
            _ => {
                if !apply_net_limit_key(OPT, &mut spec.rx, &mut spec.tx, key, value)? {
                    return Err(OptionError::UnknownKey {
                        opt: OPT,
                        key: key.into(),
                        known: NET_KEYS,
                    });
                }
            }
        }
    }
    spec.tap = tap.ok_or(OptionError::Missing {
        opt: OPT,
        key: "tap",
    })?;
    Ok(spec)
}

/// Parses the `--vsock` value.
pub fn parse_vsock(s: &str) -> Result<VsockSpec, OptionError> {
    const OPT: &str = "vsock";
    let mut cid = None;
    let mut socket = None;
    for (key, value) in key_values(OPT, s)? {
        match key {
            "cid" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| bad(OPT, key, value, "expected a number"))?;
                if !(3..u64::from(u32::MAX)).contains(&n) {
                    return Err(bad(OPT, key, value, "must be 3 to 4294967294"));
                }
                cid = Some(n);
            }
            "socket" => {
                if value.is_empty() {
                    return Err(bad(OPT, key, value, "expected a path"));
                }
                socket = Some(PathBuf::from(value));
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    opt: OPT,
                    key: key.into(),
                    known: "cid, socket",
                })
            }
        }
    }
    Ok(VsockSpec {
        cid: cid.ok_or(OptionError::Missing {
            opt: OPT,
            key: "cid",
        })?,
        socket: socket.ok_or(OptionError::Missing {
            opt: OPT,
            key: "socket",
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_full_option() {
        let n = parse_net("tap=auto,mac=52:54:00:12:34:56,ip=10.0.2.1/24,bw=10M,tx_ops=100")
            .expect("parse");
        assert_eq!(n.tap, None);
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(n.host_ip, Some((Ipv4Addr::new(10, 0, 2, 1), 24)));
        assert_eq!(n.rx.bytes_per_sec, Some(10 << 20));
        assert_eq!(n.tx.bytes_per_sec, Some(10 << 20));
        assert_eq!(n.tx.ops_per_sec, Some(100));
        assert_eq!(n.rx.ops_per_sec, None);
        let n = parse_net("tap=tap0").expect("parse");
        assert_eq!(n.tap.as_deref(), Some("tap0"));
        assert!(n.rx.is_unlimited());
    }

    #[test]
    fn net_malformed_options_are_one_line_errors() {
        for bad in [
            "",
            "mac=52:54:00:12:34:56",
            "tap",
            "tap=auto,tap=x",
            "tap=auto,colour=red",
            "tap=this-name-is-far-too-long",
            "tap=a/b",
            "tap=auto,mac=52:54:00:12:34",
            "tap=auto,mac=01:00:00:00:00:00",
            "tap=auto,mac=zz:54:00:12:34:56",
            "tap=auto,ip=10.0.2.300",
            "tap=auto,ip=10.0.2.1/33",
            "tap=auto,bw=0",
            "tap=auto,bw=fast",
            "tap=auto,rx_colour=1",
            "tap=auto,bw=99999999999999999999G",
        ] {
            let e = parse_net(bad).expect_err(bad);
            let msg = e.to_string();
            assert!(msg.starts_with("--net:"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn rates_parse() {
        for (s, want) in [
            ("10M", 10 << 20),
            ("10MiB/s", 10 << 20),
            ("10MB/s", 10 << 20),
            ("512k", 512 << 10),
            ("1500", 1500),
            ("2G", 2 << 30),
        ] {
            assert_eq!(parse_rate("disk", "bw", s), Ok(want), "{s}");
        }
        for s in ["", "M", "1.5M", "-1", "10T", "0"] {
            assert!(parse_rate("disk", "bw", s).is_err(), "{s}");
        }
    }

    #[test]
    fn disk_limit_keys() {
        let mut l = LimitSpec::default();
        assert_eq!(apply_limit_key("disk", &mut l, "bw", "10M"), Ok(true));
        assert_eq!(apply_limit_key("disk", &mut l, "iops", "500"), Ok(true));
        assert_eq!(apply_limit_key("disk", &mut l, "path", "/x"), Ok(false));
        assert_eq!(l.bytes_per_sec, Some(10 << 20));
        assert_eq!(l.ops_per_sec, Some(500));
    }

    #[test]
    fn limit_strings_alone() {
        let d = parse_disk_limits("set", "bw=20M,iops_burst=8,iops=100").expect("parse");
        assert_eq!(d.bytes_per_sec, Some(20 << 20));
        assert_eq!((d.ops_per_sec, d.ops_burst), (Some(100), Some(8)));
        assert_eq!(parse_disk_limits("set", ""), Ok(LimitSpec::default()));
        let e = parse_disk_limits("set", "rx_bw=1M").unwrap_err();
        assert!(
            e.to_string().starts_with("--set: unknown key 'rx_bw'"),
            "{e}"
        );
        let (rx, tx) = parse_net_limits("set", "bw=1M,tx_ops=10").expect("parse");
        assert_eq!(rx.bytes_per_sec, Some(1 << 20));
        assert_eq!(tx.bytes_per_sec, Some(1 << 20));
        assert_eq!((rx.ops_per_sec, tx.ops_per_sec), (None, Some(10)));
        assert!(parse_net_limits("set", "tap=x").is_err());
        assert!(parse_net_limits("set", "bw=0").is_err());
    }

    #[test]
    fn vsock_option() {
        let v = parse_vsock("cid=3,socket=/tmp/v.sock").expect("parse");
        assert_eq!(v.cid, 3);
        assert_eq!(v.socket, PathBuf::from("/tmp/v.sock"));
        for bad in [
            "",
            "cid=3",
            "socket=/x",
            "cid=2,socket=/x",
            "cid=x,socket=/x",
            "cid=4294967295,socket=/x",
            "cid=3,socket=",
            "cid=3,socket=/x,port=1",
            "cid",
        ] {
            let e = parse_vsock(bad).expect_err(bad);
            assert!(e.to_string().starts_with("--vsock:"), "{e}");
        }
    }
}
