//! Parsing a virtio-blk request from a descriptor chain (virtio 1.x §5.2.6).
//!
//! Layout: a device-readable 16-byte header (type, reserved, sector), data buffers (device-
//! writable for reads and GET_ID, readable for writes, discard and write-zeroes), and a final
//! device-writable status byte. Everything is guest-controlled: directions, lengths, sector
//! ranges, addresses and loops are all checked here, before any I/O happens.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::SECTOR_SIZE;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
const HEADER_LEN: u32 = 16;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_LEN: u32 = 16;
/// Most discard/write-zeroes segments per request (announced in the config space).
pub const MAX_SEGMENTS: u32 = 32;
/// Most data descriptors per request the parser takes (the device announces fewer as
/// `seg_max`: what fits its ring).
pub const MAX_DATA_DESCRIPTORS: usize = 1024;
/// Flag of a write-zeroes segment: the device may deallocate.
pub const WRITE_ZEROES_UNMAP: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestType {
    fn from_u32(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }

    /// Whether the data buffers must be device-writable.
    fn data_writable(self) -> bool {
        matches!(self, RequestType::In | RequestType::GetId)
    }
}

/// A discard or write-zeroes range, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub sector: u64,
    pub sectors: u32,
    pub flags: u32,
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// Data buffers in guest memory (all inside guest RAM).
    pub data: Vec<(GuestAddress, u32)>,
    /// Total bytes of `data`.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// Discard / write-zeroes ranges.
    pub segments: Vec<Segment>,
}

/// Why a chain is not a valid request. With `status` known the guest gets an error status;
/// without it the chain completes with nothing written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("chain has no readable 16-byte header")]
    BadHeader,
    #[error("chain has no writable status byte")]
    NoStatus,
    #[error("data buffer has the wrong direction")]
    WrongDirection,
    #[error("buffer {addr:#x}+{len:#x} is not in guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("data length {0} is not a whole number of sectors")]
    Unaligned(u64),
    #[error(
        "request at sector {sector} for {bytes} bytes runs past the disk's {capacity} sectors"
    )]
    OutOfRange {
        sector: u64,
        bytes: u64,
        capacity: u64,
    },
    #[error("malformed discard/write-zeroes segments")]
    BadSegments,
    #[error("request has no data buffer")]
    NoData,
    #[error("too many data descriptors")]
    TooManyDescriptors,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

/// A parse failure, with the status address when the chain had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}

/// One descriptor as the parser sees it: address, length, device-writable.
pub type Desc = (GuestAddress, u32, bool);

impl Request {
    /// Parses the descriptors of one chain for a disk of `capacity` sectors.
    pub fn parse<M: GuestMemoryBackend>(
        mem: &M,
        descs: &[Desc],
        capacity: u64,
    ) -> Result<Request, ParseFailure> {
        // The status byte is the last byte of the last descriptor, which must be writable.
        let status = match descs.last() {
            Some(&(addr, len, true)) if len >= 1 && descs.len() >= 2 => addr
                .checked_add(u64::from(len) - 1)
                .filter(|a| mem.check_range(*a, 1)),
            _ => None,
        };
        let fail = |error| ParseFailure { error, status };
        let status_addr = status.ok_or(ParseFailure {
            error: RequestError::NoStatus,
            status: None,
        })?;
        let (haddr, hlen, hwrite) = descs[0];
        if hwrite || hlen < HEADER_LEN {
            return Err(fail(RequestError::BadHeader));
        }
        let kind_raw: u32 = mem
            .read_obj(haddr)
            .map_err(|_| fail(RequestError::BadHeader))?;
        let sector_addr = haddr.checked_add(8).ok_or(fail(RequestError::BadHeader))?;
        let sector: u64 = mem
            .read_obj(sector_addr)
            .map_err(|_| fail(RequestError::BadHeader))?;
        let kind = RequestType::from_u32(u32::from_le(kind_raw));
        let sector = u64::from_le(sector);
        if let RequestType::Unsupported(t) = kind {
            return Err(fail(RequestError::Unsupported(t)));
        }

        let middle = &descs[1..descs.len() - 1];
        if middle.len() > MAX_DATA_DESCRIPTORS {
            return Err(fail(RequestError::TooManyDescriptors));
        }
        let mut data: Vec<(GuestAddress, u32)> = Vec::with_capacity(middle.len() + 1);
        for &(addr, len, writable) in middle {
            if len == 0 {
                continue;
            }
            if writable != kind.data_writable() {
                return Err(fail(RequestError::WrongDirection));
            }
            if !mem.check_range(addr, len as usize) {
                return Err(fail(RequestError::BadAddress { addr: addr.0, len }));
            }
            data.push((addr, len));
        }
        let data_len: u64 = data.iter().map(|d| u64::from(d.1)).sum();

        let mut req = Request {
            kind,
            sector,
            data,
            data_len,
            status: status_addr,
            segments: Vec::new(),
        };
        match kind {
            RequestType::In | RequestType::Out => {
                if !data_len.is_multiple_of(SECTOR_SIZE) {
                    return Err(fail(RequestError::Unaligned(data_len)));
                }
                check_range(sector, data_len, capacity).map_err(fail)?;
            }
            RequestType::GetId => {
                if data_len == 0 {
                    return Err(fail(RequestError::NoData));
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                req.segments = read_segments(mem, &req.data, capacity).map_err(fail)?;
            }
            RequestType::Flush | RequestType::Unsupported(_) => {}
        }
        Ok(req)
    }
}

fn check_range(sector: u64, bytes: u64, capacity: u64) -> Result<(), RequestError> {
    let end = sector.checked_add(bytes / SECTOR_SIZE);
    match end {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            bytes,
            capacity,
        }),
    }
}

fn read_segments<M: GuestMemoryBackend>(
    mem: &M,
    data: &[(GuestAddress, u32)],
    capacity: u64,
) -> Result<Vec<Segment>, RequestError> {
    let total: u64 = data.iter().map(|d| u64::from(d.1)).sum();
    if total == 0
        || !total.is_multiple_of(u64::from(SEGMENT_LEN))
        || total / u64::from(SEGMENT_LEN) > u64::from(MAX_SEGMENTS)
    {
        return Err(RequestError::BadSegments);
    }
    // Gather the (small) segment bytes, whatever the buffer split.
    let mut bytes = Vec::with_capacity(total as usize);
    for &(addr, len) in data {
        let mut buf = vec![0u8; len as usize];
        mem.read_slice(&mut buf, addr)
            .map_err(|_| RequestError::BadAddress { addr: addr.0, len })?;
        bytes.extend_from_slice(&buf);
    }
    let mut segs = Vec::new();
    for chunk in bytes.chunks_exact(SEGMENT_LEN as usize) {
        let mut s = [0u8; 8];
        s.copy_from_slice(&chunk[..8]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&chunk[8..12]);
        let mut f = [0u8; 4];
        f.copy_from_slice(&chunk[12..16]);
        let seg = Segment {
            sector: u64::from_le_bytes(s),
            sectors: u32::from_le_bytes(n),
            flags: u32::from_le_bytes(f),
        };
        if seg.flags & !WRITE_ZEROES_UNMAP != 0 {
            return Err(RequestError::BadSegments);
        }
        check_range(seg.sector, u64::from(seg.sectors) * SECTOR_SIZE, capacity)?;
        segs.push(seg);
    }
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arch::GuestMemoryMmap;

    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x9000;
    const CAP: u64 = 100;

    fn mem(kind: u32, sector: u64) -> GuestMemoryMmap {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        m.write_obj(kind, GuestAddress(HDR)).unwrap();
        m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        m
    }

    fn hdr() -> Desc {
        (GuestAddress(HDR), 16, false)
    }
    fn status() -> Desc {
        (GuestAddress(STATUS), 1, true)
    }

    #[test]
    fn read_request_parses() {
        let m = mem(VIRTIO_BLK_T_IN, 7);
        let r = Request::parse(
            &m,
            &[hdr(), (GuestAddress(DATA), 4096, true), status()],
            CAP,
        )
        .unwrap();
        assert_eq!(r.kind, RequestType::In);
        assert_eq!(
            (r.sector, r.data_len, r.status),
            (7, 4096, GuestAddress(STATUS))
        );
    }

    fn err(m: &GuestMemoryMmap, descs: &[Desc]) -> ParseFailure {
        Request::parse(m, descs, CAP).unwrap_err()
    }

    #[test]
    fn hostile_chains_are_rejected_with_a_status_when_possible() {
        let m = mem(VIRTIO_BLK_T_IN, 0);
        // Wrong direction for a read.
        let e = err(&m, &[hdr(), (GuestAddress(DATA), 512, false), status()]);
        assert_eq!(
            (e.error, e.status),
            (RequestError::WrongDirection, Some(GuestAddress(STATUS)))
        );
        // Data outside guest memory.
        let e = err(&m, &[hdr(), (GuestAddress(0xff00), 512, true), status()]);
        assert!(matches!(e.error, RequestError::BadAddress { .. }));
        // Not a whole sector.
        assert_eq!(
            err(&m, &[hdr(), (GuestAddress(DATA), 100, true), status()]).error,
            RequestError::Unaligned(100)
        );
        // Past the end of the disk, and sector arithmetic that would overflow.
        assert!(matches!(
            err(
                &m,
                &[hdr(), (GuestAddress(DATA), 101 * 512, true), status()]
            )
            .error,
            RequestError::OutOfRange { .. }
        ));
        let m2 = mem(VIRTIO_BLK_T_IN, u64::MAX);
        assert!(matches!(
            err(&m2, &[hdr(), (GuestAddress(DATA), 512, true), status()]).error,
            RequestError::OutOfRange { .. }
        ));
        // Header too short or writable.
        assert_eq!(
            err(&m, &[(GuestAddress(HDR), 8, false), status()]).error,
            RequestError::BadHeader
        );
        assert_eq!(
            err(&m, &[(GuestAddress(HDR), 16, true), status()]).error,
            RequestError::BadHeader
        );
        // No status: readable last descriptor, status outside memory, single descriptor, none.
        for descs in [
            vec![hdr(), (GuestAddress(STATUS), 1, false)],
            vec![hdr(), (GuestAddress(0x10000), 1, true)],
            vec![status()],
            vec![],
        ] {
            assert_eq!(
                err(&m, &descs),
                ParseFailure {
                    error: RequestError::NoStatus,
                    status: None
                }
            );
        }
        // Unknown type.
        let m3 = mem(99, 0);
        assert_eq!(
            err(&m3, &[hdr(), status()]).error,
            RequestError::Unsupported(99)
        );
    }

    #[test]
    fn discard_segments_are_checked() {
        let m = mem(VIRTIO_BLK_T_DISCARD, 0);
        let seg = |sector: u64, n: u32, flags: u32| {
            m.write_obj(sector, GuestAddress(DATA)).unwrap();
            m.write_obj(n, GuestAddress(DATA + 8)).unwrap();
            m.write_obj(flags, GuestAddress(DATA + 12)).unwrap();
        };
        seg(10, 20, 0);
        let r =
            Request::parse(&m, &[hdr(), (GuestAddress(DATA), 16, false), status()], CAP).unwrap();
        assert_eq!(
            r.segments,
            [Segment {
                sector: 10,
                sectors: 20,
                flags: 0
            }]
        );
        seg(90, 20, 0);
        assert!(
            Request::parse(&m, &[hdr(), (GuestAddress(DATA), 16, false), status()], CAP).is_err()
        );
        seg(0, 1, 0x80);
        assert!(
            Request::parse(&m, &[hdr(), (GuestAddress(DATA), 16, false), status()], CAP).is_err()
        );
        assert!(
            Request::parse(&m, &[hdr(), (GuestAddress(DATA), 15, false), status()], CAP).is_err()
        );
        assert!(Request::parse(
            &m,
            &[hdr(), (GuestAddress(DATA), 16 * 33, false), status()],
            CAP
        )
        .is_err());
    }
}
