//! The guest's memory statistics from the stats queue: a packed array of (le16 tag,
//! le64 value) pairs (virtio spec 5.5.6.3). Unknown tags are skipped; a partial entry at the
//! end is dropped.

/// Size of one (tag, value) entry.
pub const ENTRY_SIZE: usize = 10;

/// Names of the tags the spec defines, by tag (all values in bytes or counts).
pub const TAG_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kills",
    "alloc_stalls",
    "async_scans",
    "direct_scans",
    "async_reclaims",
    "direct_reclaims",
];

pub const TAG_FREE: u16 = 4;
pub const TAG_TOTAL: u16 = 5;
pub const TAG_AVAILABLE: u16 = 6;

/// One report of the guest: the value of each known tag it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStats {
    values: [Option<u64>; TAG_NAMES.len()],
}

/// What parsing a report found besides the values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseNotes {
    pub unknown_tags: usize,
    pub partial_entry: bool,
}

impl GuestStats {
    /// The value of `tag`, if the guest sent it.
    pub fn get(&self, tag: u16) -> Option<u64> {
        self.values.get(usize::from(tag)).copied().flatten()
    }

    /// Every value the guest sent, with its name, in tag order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        TAG_NAMES
            .iter()
            .zip(self.values.iter())
            .filter_map(|(n, v)| v.map(|v| (*n, v)))
    }

    /// Reads the entries in `bytes`; a later entry of the same tag wins.
    pub fn parse(bytes: &[u8]) -> (Self, ParseNotes) {
        let mut stats = GuestStats::default();
        let mut notes = ParseNotes::default();
        let entries = bytes.chunks_exact(ENTRY_SIZE);
        notes.partial_entry = !entries.remainder().is_empty();
        for e in entries {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..]);
            match stats.values.get_mut(usize::from(tag)) {
                Some(slot) => *slot = Some(u64::from_le_bytes(v)),
                None => notes.unknown_tags += 1,
            }
        }
        (stats, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, v: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&v.to_le_bytes());
        e
    }

    #[test]
    fn entries_parse_and_bad_tags_or_partial_entries_are_noted() {
        let mut b = entry(TAG_TOTAL, 512 << 20);
        b.extend(entry(99, 1));
        b.extend(entry(u16::MAX, 1));
        b.extend(entry(TAG_FREE, 7));
        b.extend(entry(TAG_FREE, 8));
        b.extend([1, 2, 3]);
        let (s, notes) = GuestStats::parse(&b);
        assert_eq!(s.get(TAG_TOTAL), Some(512 << 20));
        assert_eq!(s.get(TAG_FREE), Some(8));
        assert_eq!(s.get(TAG_AVAILABLE), None);
        assert_eq!(s.get(u16::MAX), None);
        assert_eq!(
            notes,
            ParseNotes {
                unknown_tags: 2,
                partial_entry: true
            }
        );
        let named: Vec<_> = s.named().collect();
        assert_eq!(named, [("free_memory", 8), ("total_memory", 512 << 20)]);
        assert_eq!(GuestStats::parse(&[]).0, GuestStats::default());
    }
}
