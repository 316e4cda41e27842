//! The host side of virtio-net: a TAP device opened through `/dev/net/tun` with a virtio-net
//! header on every frame (`IFF_VNET_HDR`), so checksum and segmentation offloads pass through.
//!
//! Opening a name that does not exist creates a non-persistent TAP that the kernel removes when
//! kapsel's descriptor closes (at the latest when the process ends); [`Tap::created`] says so.
//! A pre-existing (persistent) TAP is used as it is and left in place.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmm_sys_util::ioctl_iow_nr;

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
pub const MAX_NAME_LEN: usize = 15;
/// The name pattern of TAPs kapsel creates for `tap=auto` (the kernel fills in `%d`).
pub const AUTO_NAME: &str = "kapsel%d";

const TUNTAP: u32 = b'T' as u32;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, ::std::os::raw::c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, ::std::os::raw::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, ::std::os::raw::c_int);

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// `TUNSETOFFLOAD` flags: what the TAP may hand us (i.e. the guest) unfinished.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name '{0}' is invalid: 1 to 15 characters, no '/', whitespace or NUL")]
    BadName(String),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("cannot create or attach TAP '{name}'")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the virtio-net header size on TAP '{name}'")]
    VnetHdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set offloads {flags:#x} on TAP '{name}'")]
    Offload {
        name: String,
        flags: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot configure host interface '{name}' ({what})")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq`: the interface name and a 24-byte union (flags, or a `sockaddr`).
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = name.len().min(MAX_NAME_LEN);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_ipv4(&mut self, addr: Ipv4Addr) {
        self.data = [0; 24];
        // struct sockaddr_in: family (host order), port (0), address (network order)
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }
}

/// Checks a TAP name before it reaches the kernel.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name
            .chars()
            .any(|c| c == '/' || c == '\0' || c.is_whitespace() || c == ':');
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName(name.into()))
    }
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

fn interface_exists(name: &str) -> bool {
    !name.contains('%') && Path::new("/sys/class/net").join(name).exists()
}

impl Tap {
    /// Opens (creating if needed) the TAP `name`, or a new `kapsel%d` for `None`, with a
    /// `vnet_hdr_len`-byte virtio-net header on each frame, non-blocking.
    pub fn open(name: Option<&str>, vnet_hdr_len: usize) -> Result<Tap, TapError> {
        let want = name.unwrap_or(AUTO_NAME);
        validate_name(want)?;
        let existed = interface_exists(want);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new(want);
        req.set_flags(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid, properly
        // sized ifreq that outlives the call; the fd is our open /dev/net/tun.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF(), &mut req) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: want.into(),
                source: io::Error::last_os_error(),
            });
        }
        let name = req.name();
        let hdr_len = i32::try_from(vnet_hdr_len).unwrap_or(i32::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ(), &hdr_len) };
        if ret < 0 {
            return Err(TapError::VnetHdrSize {
                name,
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name,
            created: !existed,
        };
        tracing::info!(tap = %tap.name, created = tap.created, "TAP opened");
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether kapsel created this TAP (it then disappears with kapsel).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Sets the offloads the guest accepts (`TUN_F_*`).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is touched.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD(),
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Gives the host side an IPv4 address (optional) and brings the link up.
    pub fn configure_host(&self, addr: Option<(Ipv4Addr, u8)>) -> Result<(), TapError> {
        let sock = control_socket().map_err(|source| self.cfg_err("socket", source))?;
        if let Some((ip, prefix)) = addr {
            let mut req = IfReq::new(&self.name);
            req.set_ipv4(ip);
            ifreq_ioctl(&sock, SIOCSIFADDR, &mut req)
                .map_err(|source| self.cfg_err("address", source))?;
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            req.set_ipv4(Ipv4Addr::from(mask));
            ifreq_ioctl(&sock, SIOCSIFNETMASK, &mut req)
                .map_err(|source| self.cfg_err("netmask", source))?;
        }
        let mut req = IfReq::new(&self.name);
        ifreq_ioctl(&sock, SIOCGIFFLAGS, &mut req)
            .map_err(|source| self.cfg_err("flags", source))?;
        let flags = req.flags() | libc::IFF_UP as i16;
        req.set_flags(flags);
        ifreq_ioctl(&sock, SIOCSIFFLAGS, &mut req).map_err(|source| self.cfg_err("up", source))?;
        Ok(())
    }

    fn cfg_err(&self, what: &'static str, source: io::Error) -> TapError {
        TapError::Configure {
            name: self.name.clone(),
            what,
            source,
        }
    }

    /// Reads one frame (with its virtio-net header); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (with its virtio-net header).
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.created {
            tracing::info!(tap = %self.name, "removing the TAP kapsel created");
        }
    }
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: the SIOC*IF* requests read/write one `struct ifreq`; `req` is valid for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut IfReq) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "has space", "sixteen-chars-xx", "a:b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        for good in ["tap0", "kapsel%d", "fifteen-chars-x"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ifreq_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let mut r = IfReq::new("tap0");
        assert_eq!(r.name(), "tap0");
        r.set_flags(IFF_TAP | IFF_NO_PI);
        assert_eq!(r.flags(), IFF_TAP | IFF_NO_PI);
        r.set_ipv4(Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(&r.data[4..8], &[10, 0, 2, 1]);
    }

    /// Needs root and /dev/net/tun (CI has both): fails, never skips, where they are missing.
    #[test]
    fn auto_tap_is_created_configured_and_removed() {
        assert!(
            Path::new("/dev/net/tun").exists(),
            "no /dev/net/tun: this test creates a real TAP"
        );
        let tap = Tap::open(None, 12).unwrap_or_else(|e| panic!("cannot open a TAP ({e})"));
        let name = tap.name().to_string();
        assert!(name.starts_with("kapsel"), "{name}");
        assert!(tap.created());
        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            .expect("offloads");
        tap.configure_host(Some((Ipv4Addr::new(10, 254, 0, 1), 30)))
            .expect("configure");
        assert!(Path::new("/sys/class/net").join(&name).exists());
        let mut buf = [0u8; 128];
        assert_eq!(
            tap.read_frame(&mut buf)
                .err()
                .map(|e| e.kind() == io::ErrorKind::WouldBlock),
            Some(true)
        );
        drop(tap);
        assert!(!Path::new("/sys/class/net").join(&name).exists());
    }

    #[test]
    fn non_tap_interface_is_refused() {
        assert!(Path::new("/dev/net/tun").exists(), "no /dev/net/tun");
        let err = Tap::open(Some("lo"), 12).expect_err("lo is no TAP");
        assert!(matches!(err, TapError::SetIff { .. }), "{err}");
    }
}
