//! The qcow2 header (versions 2 and 3) and its extensions: parsed from untrusted bytes with
//! every field checked, and written for new images.

/// Header fields kapsel uses. Offsets are big-endian on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

pub const V2_HEADER_LEN: u32 = 72;
pub const V3_HEADER_LEN: u32 = 104;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Byte offsets of header fields kapsel rewrites in place.
pub const OFF_REFCOUNT_TABLE: u64 = 48;
pub const OFF_AUTOCLEAR: u64 = 88;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// Reads `cluster_bits` from the first bytes (at least 24) to know how much to read next.
pub fn peek_cluster_bits(b: &[u8]) -> Result<u32, String> {
    if b.len() < V2_HEADER_LEN as usize || b[..4] != crate::QCOW2_MAGIC {
        return Err("no QFI\\xfb magic".into());
    }
    let bits = be32(b, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        return Err(format!(
            "cluster_bits {bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
        ));
    }
    Ok(bits)
}

impl Header {
    /// Parses the header from `b`, the image's first cluster (or the whole file when it is
    /// shorter). Errors name the field at fault.
    pub fn parse(b: &[u8]) -> Result<Header, String> {
        let cluster_bits = peek_cluster_bits(b)?;
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(format!("version {version} (kapsel reads 2 and 3)"));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            cluster_bits,
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
        };
        let cluster_size = 1usize << cluster_bits;
        let limit = b.len().min(cluster_size);
        if version == 3 {
            if b.len() < V3_HEADER_LEN as usize {
                return Err("version 3 header is truncated".into());
            }
            h.incompatible_features = be64(b, 72);
            h.compatible_features = be64(b, 80);
            h.autoclear_features = be64(b, 88);
            h.refcount_order = be32(b, 96);
            h.header_length = be32(b, 100);
            if h.header_length < V3_HEADER_LEN
                || h.header_length as usize > limit
                || !h.header_length.is_multiple_of(8)
            {
                return Err(format!("header_length {} is invalid", h.header_length));
            }
            if h.header_length > V3_HEADER_LEN {
                h.compression_type = b[104];
            }
        }
        if h.refcount_order > 6 {
            return Err(format!("refcount_order {} is above 6", h.refcount_order));
        }
        // Extensions follow the header, inside the first cluster.
        let mut pos = h.header_length as usize;
        loop {
            if pos + 8 > limit {
                // v2 images may end right after the header with no end marker.
                break;
            }
            let typ = be32(b, pos);
            let len = be32(b, pos + 4) as usize;
            pos += 8;
            if typ == EXT_END {
                break;
            }
            if len > limit - pos {
                return Err(format!(
                    "header extension 0x{typ:08x} runs past the first cluster"
                ));
            }
            if typ == EXT_BACKING_FORMAT {
                let name = std::str::from_utf8(&b[pos..pos + len])
                    .map_err(|_| "backing format name is not UTF-8".to_string())?;
                h.backing_format = Some(name.to_string());
            }
            pos += len.div_ceil(8) * 8;
        }
        if h.backing_file_offset != 0 {
            let off = h.backing_file_offset as usize;
            let len = h.backing_file_size as usize;
            if h.backing_file_offset > limit as u64 || len == 0 || len > 1023 || len > limit - off {
                return Err("backing file name lies outside the first cluster".into());
            }
            let name = std::str::from_utf8(&b[off..off + len])
                .map_err(|_| "backing file name is not UTF-8".to_string())?;
            if name.contains('\0') {
                return Err("backing file name contains NUL".into());
            }
            h.backing_file = Some(name.to_string());
        }
        Ok(h)
    }

    /// Serializes a version 3 header with its extensions and backing name, to be written at
    /// offset 0. The backing name goes right after the extensions.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; V3_HEADER_LEN as usize];
        let put32 =
            |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_be_bytes());
        b[..4].copy_from_slice(&crate::QCOW2_MAGIC);
        put32(&mut b, 4, 3);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 32, 0);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, 0);
        put64(&mut b, 64, 0);
        put64(&mut b, 72, self.incompatible_features);
        put64(&mut b, 80, self.compatible_features);
        put64(&mut b, 88, self.autoclear_features);
        put32(&mut b, 96, self.refcount_order);
        put32(&mut b, 100, V3_HEADER_LEN);
        if let Some(fmt) = &self.backing_format {
            b.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            b.extend_from_slice(&(fmt.len() as u32).to_be_bytes());
            b.extend_from_slice(fmt.as_bytes());
            b.resize(b.len().div_ceil(8) * 8, 0);
        }
        b.extend_from_slice(&[0u8; 8]); // end of extensions
        if let Some(name) = &self.backing_file {
            let off = b.len() as u64;
            put64(&mut b, 8, off);
            put32(&mut b, 16, name.len() as u32);
            b.extend_from_slice(name.as_bytes());
        }
        b
    }
}

/// The header bytes of an image whose first cluster is `first`, changed to back onto
/// `backing` (name, format name) or onto nothing. Every field and every other header
/// extension stays; the result is zero-padded to cover the old header's bytes, so it can
/// replace them in one write at offset 0.
pub fn with_backing(first: &[u8], backing: Option<(&str, &str)>) -> Result<Vec<u8>, String> {
    let h = Header::parse(first)?;
    let cluster_size = 1usize << h.cluster_bits;
    let limit = first.len().min(cluster_size);
    if let Some((name, _)) = backing {
        if name.is_empty() || name.len() > 1023 || name.contains('\0') {
            return Err(format!(
                "backing file name '{name}' is empty, too long or has NUL"
            ));
        }
    }
    // The extensions but the backing format, and where the old header's bytes end.
    let mut exts: Vec<(u32, &[u8])> = Vec::new();
    let mut pos = h.header_length as usize;
    while pos + 8 <= limit {
        let typ = be32(first, pos);
        let len = be32(first, pos + 4) as usize;
        pos += 8;
        if typ == EXT_END {
            break;
        }
        // Checked by parse: the extension lies inside the first cluster.
        if typ != EXT_BACKING_FORMAT {
            exts.push((typ, &first[pos..pos + len]));
        }
        pos += len.div_ceil(8) * 8;
    }
    let mut old_end = pos.min(limit);
    if h.backing_file_offset != 0 {
        old_end = old_end.max(h.backing_file_offset as usize + h.backing_file_size as usize);
    }

    let mut b = first[..h.header_length as usize].to_vec();
    let push_ext = |b: &mut Vec<u8>, typ: u32, data: &[u8]| {
        b.extend_from_slice(&typ.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(8) * 8, 0);
    };
    if let Some((_, format)) = backing {
        push_ext(&mut b, EXT_BACKING_FORMAT, format.as_bytes());
    }
    for (typ, data) in exts {
        push_ext(&mut b, typ, data);
    }
    b.extend_from_slice(&[0u8; 8]); // end of extensions
    let (name_off, name_len) = match backing {
        Some((name, _)) => {
            let off = b.len();
            b.extend_from_slice(name.as_bytes());
            (off as u64, name.len() as u32)
        }
        None => (0, 0),
    };
    b[8..16].copy_from_slice(&name_off.to_be_bytes());
    b[16..20].copy_from_slice(&name_len.to_be_bytes());
    if b.len() > limit {
        return Err(format!(
            "the header with backing file name does not fit the {cluster_size}-byte header cluster"
        ));
    }
    if b.len() < old_end {
        b.resize(old_end, 0);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression_type: 0,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
        }
    }

    #[test]
    fn header_roundtrips() {
        let h = sample();
        let b = h.to_bytes();
        let mut p = Header::parse(&b).unwrap();
        assert_eq!(p.backing_file.as_deref(), Some("base.raw"));
        assert_eq!(p.backing_format.as_deref(), Some("raw"));
        p.backing_file_offset = 0;
        p.backing_file_size = 0;
        assert_eq!(p, h);
    }

    #[test]
    fn backing_is_replaced_keeping_other_extensions() {
        let mut first = sample().to_bytes();
        // an unknown extension after the backing format one: splice it in before the end
        let end = first.len() - "base.raw".len() - 8;
        let mut ext = 0x1234_5678u32.to_be_bytes().to_vec();
        ext.extend_from_slice(&3u32.to_be_bytes());
        ext.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0, 0]);
        first.splice(end..end, ext.clone());
        let name_off = first.len() - "base.raw".len();
        first[8..16].copy_from_slice(&(name_off as u64).to_be_bytes());
        first.resize(4096, 0);
        assert_eq!(
            Header::parse(&first).unwrap().backing_file.as_deref(),
            Some("base.raw")
        );

        let b = with_backing(&first, Some(("/pool/a-much-longer-name.qcow2", "qcow2"))).unwrap();
        let mut img = first.clone();
        img[..b.len()].copy_from_slice(&b);
        let h = Header::parse(&img).unwrap();
        assert_eq!(
            h.backing_file.as_deref(),
            Some("/pool/a-much-longer-name.qcow2")
        );
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        assert_eq!((h.size, h.l1_table_offset), (1 << 30, 3 << 16));
        assert!(img.windows(ext.len()).any(|w| w == ext.as_slice()), "kept");

        // none: no name, no format, the old bytes cleared
        let b = with_backing(&img, None).unwrap();
        let mut img2 = img.clone();
        img2[..b.len()].copy_from_slice(&b);
        let h = Header::parse(&img2).unwrap();
        assert_eq!((h.backing_file, h.backing_format), (None, None));
        assert!(!img2.windows(4).any(|w| w == b"pool"), "old name cleared");
        assert!(img2.windows(ext.len()).any(|w| w == ext.as_slice()));
        assert!(with_backing(&img2, Some(("", "raw"))).is_err());
        assert!(with_backing(&img2[..4096], Some((&"x".repeat(1023), "raw"))).is_ok());
        assert!(with_backing(&img2[..512], Some((&"x".repeat(1000), "raw"))).is_err());
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        let good = sample().to_bytes();
        assert!(Header::parse(&good[..50]).is_err());
        let mut b = good.clone();
        b[0] = b'X';
        assert!(Header::parse(&b).is_err());
        let mut b = good.clone();
        b[23] = 30; // cluster_bits
        assert!(Header::parse(&b).is_err());
        let mut b = good.clone();
        b[7] = 4; // version
        assert!(Header::parse(&b).is_err());
        let mut b = good.clone();
        b[103] = 200; // header_length beyond the data
        assert!(Header::parse(&b).is_err());
        let mut b = good.clone();
        b[104 + 7] = 0xff; // extension length
        assert!(Header::parse(&b).is_err());
        let mut b = good.clone();
        b[15] = 0xf0; // backing file offset
        assert!(Header::parse(&b).is_err());
        let mut b = good;
        b[99] = 7; // refcount_order
        assert!(Header::parse(&b).is_err());
    }
}
