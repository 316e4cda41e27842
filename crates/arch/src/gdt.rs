//! Boot-time GDT entries and their conversion into KVM segment registers.

use hv::types::kvm_segment;

/// Builds a GDT entry from flags (access byte in bits 0..8, flags nibble in bits 12..16),
/// base and limit, in the layout of the Intel SDM Vol. 3 §3.4.5.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT for the 64-bit entry: null, 64-bit code, data, TSS.
pub const GDT_64: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The boot GDT for the PVH 32-bit entry: null, 32-bit code, data, TSS.
pub const GDT_32: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

fn field(entry: u64, shift: u32, mask: u64) -> u64 {
    (entry >> shift) & mask
}

/// Decodes GDT entry `index` of `table` into the segment register KVM expects.
pub fn segment_from_gdt(table: &[u64; 4], index: u8) -> kvm_segment {
    let entry = table[usize::from(index) & 3];
    let base = field(entry, 16, 0xff_ffff) | (field(entry, 56, 0xff) << 24);
    let raw_limit = (field(entry, 0, 0xffff) | (field(entry, 48, 0xf) << 16)) as u32;
    let granularity = field(entry, 55, 1) as u8;
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: field(entry, 40, 0xf) as u8,
        present: field(entry, 47, 1) as u8,
        dpl: field(entry, 45, 3) as u8,
        db: field(entry, 54, 1) as u8,
        s: field(entry, 44, 1) as u8,
        l: field(entry, 53, 1) as u8,
        g: granularity,
        avl: field(entry, 52, 1) as u8,
        unusable: u8::from(field(entry, 47, 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_decodes() {
        let cs = segment_from_gdt(&GDT_64, 1);
        assert_eq!(cs.selector, 0x8);
        assert_eq!(cs.type_, 0xb);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.g), (1, 0, 1, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn code32_and_data_segments_decode() {
        let cs = segment_from_gdt(&GDT_32, 1);
        assert_eq!((cs.l, cs.db, cs.type_), (0, 1, 0xb));
        let ds = segment_from_gdt(&GDT_32, 2);
        assert_eq!((ds.type_, ds.db, ds.selector), (3, 1, 0x10));
        let tr = segment_from_gdt(&GDT_32, 3);
        assert_eq!((tr.type_, tr.limit, tr.s), (0xb, 0x67, 0));
    }

    #[test]
    fn entry_layout_matches_known_values() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
