//! The snapshot state file: a self-checking envelope around the serialized VM state.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KAPSNAP\0"
//!      8     4  format version (little endian), independent of kapsel's version
//!     12     4  reserved, zero
//!     16     8  payload length
//!     24     4  CRC-32 (IEEE) of the payload
//!     28     4  reserved, zero
//!     32     …  payload (JSON)
//! ```
//! A file is accepted only if every field checks out and it is no larger than
//! [`MAX_STATE_FILE`]; guest memory lives in a separate file.

pub const MAGIC: [u8; 8] = *b"KAPSNAP\0";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 32;
/// Largest state file accepted on load.
pub const MAX_STATE_FILE: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("state file is {0} bytes, shorter than its header")]
    TooShort(usize),
    #[error("not a kapsel snapshot state file (bad magic)")]
    BadMagic,
    #[error("snapshot format version {found} is not supported (this kapsel reads version {FORMAT_VERSION})")]
    Version { found: u32 },
    #[error("state file is truncated: header says {expected} payload bytes, file has {found}")]
    Truncated { expected: u64, found: u64 },
    #[error("state file is larger than {MAX_STATE_FILE} bytes")]
    TooLarge,
    #[error("state file is corrupted (checksum mismatch)")]
    Checksum,
}

/// Wraps `payload` in the header.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks the envelope and returns the payload.
pub fn decode(file: &[u8]) -> Result<&[u8], FormatError> {
    if file.len() as u64 > MAX_STATE_FILE {
        return Err(FormatError::TooLarge);
    }
    if file.len() < HEADER_LEN {
        return Err(FormatError::TooShort(file.len()));
    }
    if file[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = le_u32(&file[8..12]);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let len = le_u64(&file[16..24]);
    let found = (file.len() - HEADER_LEN) as u64;
    if len != found {
        return Err(FormatError::Truncated {
            expected: len,
            found,
        });
    }
    let payload = &file[HEADER_LEN..];
    if crc32fast::hash(payload) != le_u32(&file[24..28]) {
        return Err(FormatError::Checksum);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let f = encode(b"{\"a\":1}");
        assert_eq!(decode(&f).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn every_kind_of_damage_is_refused() {
        let good = encode(b"payload bytes");
        assert_eq!(decode(&good[..10]), Err(FormatError::TooShort(10)));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(decode(&bad_magic), Err(FormatError::BadMagic));
        let mut bad_version = good.clone();
        bad_version[8] = 9;
        assert_eq!(decode(&bad_version), Err(FormatError::Version { found: 9 }));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(FormatError::Truncated { .. })
        ));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped), Err(FormatError::Checksum));
    }
}
