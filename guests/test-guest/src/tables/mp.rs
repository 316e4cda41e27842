//! Intel MultiProcessor Specification 1.4: floating pointer "_MP_" and the "PCMP" table.

use crate::mem::Mem;

pub struct MpInfo {
    pub fp_addr: u64,
    pub table_addr: u64,
    pub spec_rev: u8,
    pub cpus: u32,
    /// Processor entries carry APIC ids 0, 1, .. n-1 in order.
    pub apic_ids_sequential: bool,
    /// Exactly the first processor entry has the BP flag.
    pub bsp_ok: bool,
    pub ioapic_addr: Option<u32>,
    pub lapic_addr: u32,
    pub entries: u16,
}

/// Finds the floating pointer on a 16-byte boundary in [start, end).
pub fn find_floating_pointer(m: &dyn Mem, start: u64, end: u64) -> Option<u64> {
    (start..end).step_by(16).find(|&a| {
        let mut sig = [0u8; 4];
        m.read(a, &mut sig) && &sig == b"_MP_"
    })
}

/// Parses and checksums the MP floating pointer in [start, end) and its config table.
pub fn parse(m: &dyn Mem, start: u64, end: u64) -> Result<MpInfo, &'static str> {
    let fp = find_floating_pointer(m, start, end).ok_or("no _MP_ floating pointer")?;
    let len16 = m.u8(fp + 8).ok_or("floating pointer unreadable")?;
    if len16 != 1 {
        return Err("floating pointer length is not 1 (16 bytes)");
    }
    if m.sum(fp, 16) != Some(0) {
        return Err("floating pointer checksum");
    }
    let spec_rev = m.u8(fp + 9).ok_or("floating pointer unreadable")?;
    let table = u64::from(m.u32(fp + 4).ok_or("floating pointer unreadable")?);
    if table == 0 {
        return Err("no MP configuration table (default configurations unsupported)");
    }
    let mut sig = [0u8; 4];
    if !m.read(table, &mut sig) || &sig != b"PCMP" {
        return Err("MP configuration table signature is not PCMP");
    }
    let base_len = m.u16(table + 4).ok_or("MP table unreadable")?;
    if base_len < 44 || m.sum(table, u64::from(base_len)) != Some(0) {
        return Err("MP configuration table checksum");
    }
    let entries = m.u16(table + 34).ok_or("MP table unreadable")?;
    let lapic_addr = m.u32(table + 36).ok_or("MP table unreadable")?;
    let mut info = MpInfo {
        fp_addr: fp,
        table_addr: table,
        spec_rev,
        cpus: 0,
        apic_ids_sequential: true,
        bsp_ok: true,
        ioapic_addr: None,
        lapic_addr,
        entries,
    };
    let end = table + u64::from(base_len);
    let mut p = table + 44;
    for _ in 0..entries {
        if p >= end {
            return Err("MP entries run past the table length");
        }
        let kind = m.u8(p).ok_or("MP entry unreadable")?;
        let size = match kind {
            0 => {
                let id = m.u8(p + 1).ok_or("MP entry unreadable")?;
                let flags = m.u8(p + 3).ok_or("MP entry unreadable")?;
                if flags & 1 != 0 {
                    if u32::from(id) != info.cpus {
                        info.apic_ids_sequential = false;
                    }
                    let is_bp = flags & 2 != 0;
                    if is_bp != (info.cpus == 0) {
                        info.bsp_ok = false;
                    }
                    info.cpus += 1;
                }
                20
            }
            2 => {
                let flags = m.u8(p + 3).ok_or("MP entry unreadable")?;
                if flags & 1 != 0 {
                    info.ioapic_addr = Some(m.u32(p + 4).ok_or("MP entry unreadable")?);
                }
                8
            }
            1 | 3 | 4 => 8,
            _ => return Err("unknown MP entry type"),
        };
        p += size;
    }
    Ok(info)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::mem::VecMem;

    /// Writes a valid MP floating pointer at 0xf0000 and a table for `cpus` CPUs.
    pub fn build(m: &mut VecMem, cpus: u8) {
        let fp = 0xf0000;
        let t = 0xf0010;
        m.write(fp, b"_MP_");
        m.write(fp + 4, &(t as u32).to_le_bytes());
        m.write(fp + 8, &[1, 4]);
        m.fix_checksum(fp, 16, fp + 10);
        let mut e = t + 44;
        for id in 0..cpus {
            let flags = if id == 0 { 3 } else { 1 };
            m.write(e, &[0, id, 0x14, flags]);
            e += 20;
        }
        m.write(e, &[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        e += 8;
        m.write(e, &[2, cpus, 0x11, 1]);
        m.write(e + 4, &0xfec0_0000u32.to_le_bytes());
        e += 8;
        let len = (e - t) as u16;
        m.write(t, b"PCMP");
        m.write(t + 4, &len.to_le_bytes());
        m.write(t + 6, &[4]);
        m.write(t + 34, &(u16::from(cpus) + 2).to_le_bytes());
        m.write(t + 36, &0xfee0_0000u32.to_le_bytes());
        m.fix_checksum(t, u64::from(len), t + 7);
    }

    #[test]
    fn parses_a_valid_table() {
        let mut m = VecMem::new(0xe0000, 0x20000);
        build(&mut m, 4);
        let info = parse(&m, 0xf0000, 0x100000).expect("valid");
        assert_eq!(info.cpus, 4);
        assert!(info.apic_ids_sequential && info.bsp_ok);
        assert_eq!(info.ioapic_addr, Some(0xfec0_0000));
        assert_eq!(info.lapic_addr, 0xfee0_0000);
    }

    #[test]
    fn rejects_a_bad_checksum() {
        let mut m = VecMem::new(0xe0000, 0x20000);
        build(&mut m, 2);
        m.write(0xf0010 + 44 + 1, &[7]);
        assert!(parse(&m, 0xf0000, 0x100000).is_err());
    }

    #[test]
    fn missing_pointer_is_an_error() {
        let m = VecMem::new(0xe0000, 0x20000);
        assert!(parse(&m, 0xf0000, 0x100000).is_err());
    }
}
