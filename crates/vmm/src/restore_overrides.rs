//! What a restore may change in the saved configuration, so one snapshot runs many times side
//! by side as clones, each on its own TAP, vsock socket and disk:
//!
//! ```text
//! kapsel restore DIR --net id=net0,tap=NAME|auto[,mac=…][,ip=ADDR/PREFIX]
//!                    --vsock socket=PATH[,cid=N]
//!                    --disk id=disk0,path=FILE[,format=raw|qcow2]
//! ```
//! `--net` and `--disk` repeat (one per device, named by its id: `net0`, `net1`, … and the
//! disk ids of the saved `--disk`s, `disk0`, … by default). Everything is checked against the
//! snapshot before anything is opened; a device the snapshot lacks or a key given twice is a
//! one-line error.
//!
//! What a guest sees:
//! - A new TAP keeps the guest's card as it was (MAC, link, queues), but the host end is a new
//!   interface with its own MAC (so is the auto TAP of every restore): the guest's ARP entry
//!   for the host address points at the old MAC until the host sends first (its ARP request
//!   updates the entry) or the entry expires (within a minute).
//! - A new MAC is written into the card's configuration space, but the driver read the MAC
//!   when it probed the card and keeps sending from the old one until it probes again (a
//!   reboot, or unbinding and binding the driver). Clones on one bridge need distinct MACs:
//!   set the new one inside the guest too (`ip link set dev eth0 address …`).
//! - A new vsock CID is read by the driver at the transport reset every restore sends, so the
//!   guest uses it at once; its old connections are reset either way.
//! - A disk override must have the saved disk's size (the guest sized its block device at
//!   probe time); its contents are whatever the file holds, so give each clone its own copy
//!   or qcow2 overlay (`format=qcow2`; without `format=` the saved disk's format stays) of
//!   the disk the snapshot was taken with.

use std::path::PathBuf;

use crate::net_config::{key_values, parse_net, OptionError, VsockSpec};
use crate::VmConfig;

/// A clone's own TAP, MAC or host address for card `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOverride {
    pub id: String,
    /// `Some(None)` for `tap=auto`.
    pub tap: Option<Option<String>>,
    pub mac: Option<[u8; 6]>,
    pub host_ip: Option<(std::net::Ipv4Addr, u8)>,
}

/// A clone's own vsock socket or CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockOverride {
    pub socket: Option<PathBuf>,
    pub cid: Option<u64>,
}

/// A clone's own image for disk `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOverride {
    pub id: String,
    pub path: PathBuf,
    /// `None`: the saved disk's format.
    pub format: Option<disk::Format>,
}

/// Every override of one restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOverrides {
    pub nets: Vec<NetOverride>,
    pub vsock: Option<VsockOverride>,
    pub disks: Vec<DiskOverride>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("--{opt}: the snapshot has no {opt} '{id}' (it has: {have})")]
    NoSuchDevice {
        opt: &'static str,
        id: String,
        have: String,
    },
    #[error("--{opt}: '{id}' is overridden twice")]
    Twice { opt: &'static str, id: String },
    #[error("--vsock: the snapshot has no vsock device")]
    NoVsock,
    #[error("--{0}: nothing to override (give at least one key besides id)")]
    Empty(&'static str),
}

fn missing(opt: &'static str, key: &'static str) -> OverrideError {
    OptionError::Missing { opt, key }.into()
}

fn unknown(opt: &'static str, key: &str, known: &'static str) -> OverrideError {
    OptionError::UnknownKey {
        opt,
        key: key.into(),
        known,
    }
    .into()
}

fn bad(opt: &'static str, key: &str, value: &str, why: &'static str) -> OverrideError {
    OptionError::BadValue {
        opt,
        key: key.into(),
        value: value.into(),
        why,
    }
    .into()
}

/// Parses one `--net` override: `id=` and any of `tap=`, `mac=`, `ip=` (checked as `--net`
/// checks them).
pub fn parse_net_override(s: &str) -> Result<NetOverride, OverrideError> {
    const OPT: &str = "net";
    let mut id = None;
    let mut rest = Vec::new();
    let mut has_tap = false;
    for (k, v) in key_values(OPT, s)? {
        match k {
            "id" => id = Some(v.to_string()),
            "tap" | "mac" | "ip" => {
                has_tap |= k == "tap";
                rest.push(format!("{k}={v}"));
            }
            _ => return Err(unknown(OPT, k, "id, tap, mac, ip")),
        }
    }
    let id = id.ok_or_else(|| missing(OPT, "id"))?;
    if rest.is_empty() {
        return Err(OverrideError::Empty(OPT));
    }
    if !has_tap {
        rest.push("tap=auto".into());
    }
    let spec = parse_net(&rest.join(","))?;
    Ok(NetOverride {
        id,
        tap: has_tap.then_some(spec.tap),
        mac: spec.mac,
        host_ip: spec.host_ip,
    })
}

/// Parses the `--vsock` override: any of `socket=`, `cid=`.
pub fn parse_vsock_override(s: &str) -> Result<VsockOverride, OverrideError> {
    const OPT: &str = "vsock";
    let mut o = VsockOverride {
        socket: None,
        cid: None,
    };
    for (k, v) in key_values(OPT, s)? {
        match k {
            "socket" if !v.is_empty() => o.socket = Some(PathBuf::from(v)),
            "socket" => return Err(bad(OPT, k, v, "expected a path")),
            "cid" => {
                let cid: u64 = v
                    .parse()
                    .ok()
                    .filter(|c| (3..u64::from(u32::MAX)).contains(c))
                    .ok_or_else(|| bad(OPT, k, v, "expected a number from 3 to 4294967294"))?;
                o.cid = Some(cid);
            }
            _ => return Err(unknown(OPT, k, "socket, cid")),
        }
    }
    if o.socket.is_none() && o.cid.is_none() {
        return Err(OverrideError::Empty(OPT));
    }
    Ok(o)
}

/// Parses one `--disk` override: `id=`, `path=` and optionally `format=raw|qcow2`.
pub fn parse_disk_override(s: &str) -> Result<DiskOverride, OverrideError> {
    const OPT: &str = "disk";
    let (mut id, mut path, mut format) = (None, None, None);
    for (k, v) in key_values(OPT, s)? {
        match k {
            "id" => id = Some(v.to_string()),
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "path" => return Err(bad(OPT, k, v, "expected a path")),
            "format" => {
                format = Some(
                    v.parse::<disk::Format>()
                        .map_err(|_| bad(OPT, k, v, "expected raw or qcow2"))?,
                );
            }
            _ => return Err(unknown(OPT, k, "id, path, format")),
        }
    }
    Ok(DiskOverride {
        id: id.ok_or_else(|| missing(OPT, "id"))?,
        path: path.ok_or_else(|| missing(OPT, "path"))?,
        format,
    })
}

impl RestoreOverrides {
    /// Parses the command-line values of `kapsel restore`.
    pub fn parse(
        nets: &[String],
        vsock: Option<&str>,
        disks: &[String],
    ) -> Result<Self, OverrideError> {
        let o = RestoreOverrides {
            nets: nets
                .iter()
                .map(|s| parse_net_override(s))
                .collect::<Result<_, _>>()?,
            vsock: vsock.map(parse_vsock_override).transpose()?,
            disks: disks
                .iter()
                .map(|s| parse_disk_override(s))
                .collect::<Result<_, _>>()?,
        };
        once("net", o.nets.iter().map(|n| n.id.as_str()))?;
        once("disk", o.disks.iter().map(|d| d.id.as_str()))?;
        Ok(o)
    }

    /// Applies the overrides to the snapshot's configuration.
    pub fn apply(&self, config: &mut VmConfig) -> Result<(), OverrideError> {
        let net_ids: Vec<String> = (0..config.nets.len()).map(|i| format!("net{i}")).collect();
        for o in &self.nets {
            let i = position("net", &net_ids, &o.id)?;
            let spec = &mut config.nets[i];
            if let Some(tap) = &o.tap {
                spec.tap.clone_from(tap);
            }
            if o.mac.is_some() {
                spec.mac = o.mac;
            }
            if o.host_ip.is_some() {
                spec.host_ip = o.host_ip;
            }
        }
        if let Some(o) = &self.vsock {
            let spec: &mut VsockSpec = config.vsock.as_mut().ok_or(OverrideError::NoVsock)?;
            if let Some(socket) = &o.socket {
                spec.socket.clone_from(socket);
            }
            if let Some(cid) = o.cid {
                spec.cid = cid;
            }
        }
        let disk_ids = crate::disk_config::disk_ids(&config.disks).unwrap_or_default();
        for o in &self.disks {
            let i = position("disk", &disk_ids, &o.id)?;
            config.disks[i].path.clone_from(&o.path);
            if o.format.is_some() {
                config.disks[i].format = o.format;
            }
        }
        Ok(())
    }
}

fn once<'a>(opt: &'static str, ids: impl Iterator<Item = &'a str>) -> Result<(), OverrideError> {
    let mut seen = Vec::new();
    for id in ids {
        if seen.contains(&id) {
            return Err(OverrideError::Twice {
                opt,
                id: id.to_string(),
            });
        }
        seen.push(id);
    }
    Ok(())
}

fn position(opt: &'static str, ids: &[String], id: &str) -> Result<usize, OverrideError> {
    ids.iter()
        .position(|i| i == id)
        .ok_or_else(|| OverrideError::NoSuchDevice {
            opt,
            id: id.to_string(),
            have: if ids.is_empty() {
                "none".into()
            } else {
                ids.join(", ")
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "bzImage".into(),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory: 256 << 20,
            boot_timer: false,
            nets: vec![parse_net("tap=auto,ip=10.0.2.1/24").unwrap()],
            vsock: Some(VsockSpec {
                cid: 3,
                socket: "/tmp/v.sock".into(),
            }),
            disks: vec![crate::disk_config::parse_disk("path=/a.img").unwrap()],
            rng: false,
            balloon: None,
            memory_backing: Default::default(),
        }
    }

    fn parse(
        nets: &[&str],
        vsock: Option<&str>,
        disks: &[&str],
    ) -> Result<RestoreOverrides, String> {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        RestoreOverrides::parse(&v(nets), vsock, &v(disks)).map_err(|e| e.to_string())
    }

    #[test]
    fn overrides_change_only_what_they_name() {
        let o = parse(
            &["id=net0,tap=clone1,mac=52:54:00:00:00:11"],
            Some("socket=/tmp/c1.sock,cid=7"),
            &["id=disk0,path=/c1.img,format=qcow2"],
        )
        .unwrap();
        let mut c = config();
        o.apply(&mut c).unwrap();
        assert_eq!(c.nets[0].tap.as_deref(), Some("clone1"));
        assert_eq!(c.nets[0].mac, Some([0x52, 0x54, 0, 0, 0, 0x11]));
        assert_eq!(c.nets[0].host_ip, config().nets[0].host_ip, "ip kept");
        assert_eq!(
            c.vsock,
            Some(VsockSpec {
                cid: 7,
                socket: "/tmp/c1.sock".into()
            })
        );
        assert_eq!(c.disks[0].path, PathBuf::from("/c1.img"));
        assert_eq!(c.disks[0].format, Some(disk::Format::Qcow2));
        assert!(!c.disks[0].read_only);

        let mut c = config();
        RestoreOverrides::default().apply(&mut c).unwrap();
        assert_eq!(c.nets, config().nets);
    }

    /// `--net` values, the `--vsock` value, `--disk` values, and the expected message part.
    type Case<'a> = (&'a [&'a str], Option<&'a str>, &'a [&'a str], &'a str);

    #[test]
    fn bad_overrides_are_one_clear_line() {
        let cases: &[Case] = &[
            (&["tap=x"], None, &[], "--net: missing 'id='"),
            (&["id=net0"], None, &[], "--net: nothing to override"),
            (&["id=net0,tap=a/b"], None, &[], "--net: invalid tap 'a/b'"),
            (&["id=net0,mac=01:00:00:00:00:01"], None, &[], "multicast"),
            (
                &["id=net0,colour=red"],
                None,
                &[],
                "--net: unknown key 'colour'",
            ),
            (
                &["id=net0,tap=a", "id=net0,tap=b"],
                None,
                &[],
                "'net0' is overridden twice",
            ),
            (&[], Some("cid=2"), &[], "--vsock: invalid cid '2'"),
            (&[], Some(""), &[], "--vsock: nothing to override"),
            (&[], None, &["id=disk0"], "--disk: missing 'path='"),
            (
                &[],
                None,
                &["id=disk0,path=/x,format=qcow3"],
                "--disk: invalid format 'qcow3'",
            ),
            (
                &[],
                None,
                &["id=disk0,path=/x,path=/y"],
                "--disk: 'path' given twice",
            ),
        ];
        for (nets, vsock, disks, want) in cases {
            let e = parse(nets, *vsock, disks).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn overrides_of_devices_the_snapshot_lacks_are_refused() {
        let apply = |nets: &[&str], vsock, disks: &[&str], c: &mut VmConfig| {
            parse(nets, vsock, disks)
                .unwrap()
                .apply(c)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            apply(&["id=net1,tap=x"], None, &[], &mut config()).unwrap_err(),
            "--net: the snapshot has no net 'net1' (it has: net0)"
        );
        assert_eq!(
            apply(&[], None, &["id=vdb,path=/x"], &mut config()).unwrap_err(),
            "--disk: the snapshot has no disk 'vdb' (it has: disk0)"
        );
        let mut bare = VmConfig {
            nets: vec![],
            vsock: None,
            ..config()
        };
        assert_eq!(
            apply(&[], Some("cid=9"), &[], &mut bare).unwrap_err(),
            "--vsock: the snapshot has no vsock device"
        );
        assert_eq!(
            apply(&["id=net0,tap=x"], None, &[], &mut bare).unwrap_err(),
            "--net: the snapshot has no net 'net0' (it has: none)"
        );
    }
}
