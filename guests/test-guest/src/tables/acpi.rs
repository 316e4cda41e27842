//! ACPI: RSDP (revision 2) -> XSDT -> FACP (-> DSDT), APIC (MADT); every checksum verified.

use crate::mem::Mem;

/// Tables are small; a length above this is a corrupt header, not a table to walk.
const MAX_TABLE_LEN: u32 = 1 << 20;
const MAX_TABLES: usize = 16;

pub struct AcpiInfo {
    pub rsdp: u64,
    pub revision: u8,
    pub xsdt: u64,
    /// Signatures in XSDT order, then the DSDT found through the FACP.
    pub sigs: [[u8; 4]; MAX_TABLES],
    pub nsigs: usize,
    pub madt_cpus: u32,
    pub madt_ioapic: Option<u32>,
    pub madt_lapic: u32,
    pub hw_reduced: bool,
    pub dsdt: u64,
    /// FADT SLEEP_CONTROL_REG address (hardware-reduced ACPI), if present.
    pub sleep_control: Option<u64>,
}

impl AcpiInfo {
    pub fn sigs(&self) -> &[[u8; 4]] {
        &self.sigs[..self.nsigs]
    }
}

/// Scans [start, end) on 16-byte boundaries for "RSD PTR ".
pub fn scan_rsdp(m: &dyn Mem, start: u64, end: u64) -> Option<u64> {
    (start..end).step_by(16).find(|&a| {
        let mut sig = [0u8; 8];
        m.read(a, &mut sig) && &sig == b"RSD PTR "
    })
}

/// Checks a table header at `addr`: readable, sane length, zero checksum. Returns the
/// signature and length.
pub fn check_table(m: &dyn Mem, addr: u64) -> Result<([u8; 4], u32), &'static str> {
    let mut sig = [0u8; 4];
    if !m.read(addr, &mut sig) {
        return Err("ACPI table pointer unreadable");
    }
    let len = m.u32(addr + 4).ok_or("ACPI table unreadable")?;
    if !(36..=MAX_TABLE_LEN).contains(&len) {
        return Err("ACPI table length out of range");
    }
    if m.sum(addr, u64::from(len)) != Some(0) {
        return Err("ACPI table checksum");
    }
    Ok((sig, len))
}

pub fn parse(m: &dyn Mem, rsdp: u64) -> Result<AcpiInfo, &'static str> {
    let mut sig = [0u8; 8];
    if !m.read(rsdp, &mut sig) || &sig != b"RSD PTR " {
        return Err("RSDP signature");
    }
    if m.sum(rsdp, 20) != Some(0) {
        return Err("RSDP checksum");
    }
    let revision = m.u8(rsdp + 15).ok_or("RSDP unreadable")?;
    if revision < 2 {
        return Err("RSDP revision below 2 (no XSDT)");
    }
    let len = m.u32(rsdp + 20).ok_or("RSDP unreadable")?;
    if len < 36 || m.sum(rsdp, u64::from(len)) != Some(0) {
        return Err("RSDP extended checksum");
    }
    let xsdt = m.u64(rsdp + 24).ok_or("RSDP unreadable")?;
    let (xsig, xlen) = check_table(m, xsdt)?;
    if &xsig != b"XSDT" {
        return Err("XSDT signature");
    }
    let mut info = AcpiInfo {
        rsdp,
        revision,
        xsdt,
        sigs: [[0; 4]; MAX_TABLES],
        nsigs: 0,
        madt_cpus: 0,
        madt_ioapic: None,
        madt_lapic: 0,
        hw_reduced: false,
        dsdt: 0,
        sleep_control: None,
    };
    let n = (xlen - 36) / 8;
    for k in 0..u64::from(n) {
        let addr = m.u64(xsdt + 36 + k * 8).ok_or("XSDT entry unreadable")?;
        let (sig, len) = check_table(m, addr)?;
        info.push(sig);
        match &sig {
            b"FACP" => parse_fadt(m, addr, len, &mut info)?,
            b"APIC" => parse_madt(m, addr, len, &mut info)?,
            _ => {}
        }
    }
    if info.dsdt != 0 {
        let (sig, _) = check_table(m, info.dsdt)?;
        if &sig != b"DSDT" {
            return Err("FADT DSDT pointer does not point at a DSDT");
        }
        info.push(sig);
    }
    Ok(info)
}

impl AcpiInfo {
    fn push(&mut self, sig: [u8; 4]) {
        if self.nsigs < MAX_TABLES {
            self.sigs[self.nsigs] = sig;
            self.nsigs += 1;
        }
    }
}

fn parse_fadt(m: &dyn Mem, a: u64, len: u32, info: &mut AcpiInfo) -> Result<(), &'static str> {
    if len < 116 {
        return Err("FADT too short");
    }
    let flags = m.u32(a + 112).ok_or("FADT unreadable")?;
    info.hw_reduced = flags & (1 << 20) != 0;
    let dsdt32 = u64::from(m.u32(a + 40).ok_or("FADT unreadable")?);
    let xdsdt = if len >= 148 {
        m.u64(a + 140).ok_or("FADT unreadable")?
    } else {
        0
    };
    info.dsdt = if xdsdt != 0 { xdsdt } else { dsdt32 };
    if len >= 256 {
        // SLEEP_CONTROL_REG: a Generic Address Structure at 244, address at +4.
        let addr = m.u64(a + 248).ok_or("FADT unreadable")?;
        if addr != 0 {
            info.sleep_control = Some(addr);
        }
    }
    Ok(())
}

fn parse_madt(m: &dyn Mem, a: u64, len: u32, info: &mut AcpiInfo) -> Result<(), &'static str> {
    if len < 44 {
        return Err("MADT too short");
    }
    info.madt_lapic = m.u32(a + 36).ok_or("MADT unreadable")?;
    let end = a + u64::from(len);
    let mut p = a + 44;
    while p + 2 <= end {
        let kind = m.u8(p).ok_or("MADT unreadable")?;
        let elen = m.u8(p + 1).ok_or("MADT unreadable")?;
        if elen < 2 || p + u64::from(elen) > end {
            return Err("MADT entry length");
        }
        match kind {
            0 if elen >= 8 => {
                let flags = m.u32(p + 4).ok_or("MADT unreadable")?;
                if flags & 1 != 0 {
                    info.madt_cpus += 1;
                }
            }
            1 if elen >= 12 => info.madt_ioapic = Some(m.u32(p + 4).ok_or("MADT unreadable")?),
            9 if elen >= 16 => {
                let flags = m.u32(p + 8).ok_or("MADT unreadable")?;
                if flags & 1 != 0 {
                    info.madt_cpus += 1;
                }
            }
            _ => {}
        }
        p += u64::from(elen);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::VecMem;

    fn header(m: &mut VecMem, at: u64, sig: &[u8; 4], len: u32) {
        m.write(at, sig);
        m.write(at + 4, &len.to_le_bytes());
        m.write(at + 8, &[2]);
    }

    /// RSDP at 0xe0000, XSDT 0xe0100, FACP 0xe0200, APIC 0xe0400, DSDT 0xe0600.
    fn build(m: &mut VecMem, cpus: u8) {
        let (rsdp, xsdt, facp, madt, dsdt) = (0xe0000, 0xe0100, 0xe0200, 0xe0400, 0xe0600);
        header(m, dsdt, b"DSDT", 40);
        m.fix_checksum(dsdt, 40, dsdt + 9);
        header(m, facp, b"FACP", 276);
        m.write(facp + 112, &(1u32 << 20).to_le_bytes());
        m.write(facp + 140, &dsdt.to_le_bytes());
        m.write(facp + 248, &0x600u64.to_le_bytes());
        m.fix_checksum(facp, 276, facp + 9);
        let mlen = 44 + 8 * u32::from(cpus) + 12;
        header(m, madt, b"APIC", mlen);
        m.write(madt + 36, &0xfee0_0000u32.to_le_bytes());
        let mut e = madt + 44;
        for id in 0..cpus {
            m.write(e, &[0, 8, id, id, 1, 0, 0, 0]);
            e += 8;
        }
        m.write(e, &[1, 12, 0, 0]);
        m.write(e + 4, &0xfec0_0000u32.to_le_bytes());
        m.fix_checksum(madt, u64::from(mlen), madt + 9);
        header(m, xsdt, b"XSDT", 36 + 16);
        m.write(xsdt + 36, &facp.to_le_bytes());
        m.write(xsdt + 44, &madt.to_le_bytes());
        m.fix_checksum(xsdt, 52, xsdt + 9);
        m.write(rsdp, b"RSD PTR ");
        m.write(rsdp + 15, &[2]);
        m.write(rsdp + 20, &36u32.to_le_bytes());
        m.write(rsdp + 24, &xsdt.to_le_bytes());
        m.fix_checksum(rsdp, 20, rsdp + 8);
        m.fix_checksum(rsdp, 36, rsdp + 32);
    }

    #[test]
    fn parses_valid_tables() {
        let mut m = VecMem::new(0xe0000, 0x20000);
        build(&mut m, 3);
        assert_eq!(scan_rsdp(&m, 0xe0000, 0x100000), Some(0xe0000));
        let info = parse(&m, 0xe0000).expect("valid");
        assert_eq!(info.sigs(), &[*b"FACP", *b"APIC", *b"DSDT"]);
        assert_eq!(info.madt_cpus, 3);
        assert_eq!(info.madt_ioapic, Some(0xfec0_0000));
        assert!(info.hw_reduced);
        assert_eq!(info.sleep_control, Some(0x600));
    }

    #[test]
    fn detects_a_corrupted_table() {
        let mut m = VecMem::new(0xe0000, 0x20000);
        build(&mut m, 2);
        m.write(0xe0400 + 50, &[0x55]);
        assert_eq!(parse(&m, 0xe0000).err(), Some("ACPI table checksum"));
    }

    #[test]
    fn hostile_lengths_do_not_loop_or_fault() {
        let mut m = VecMem::new(0xe0000, 0x20000);
        build(&mut m, 1);
        // MADT entry with length 0.
        m.write(0xe0400 + 45, &[0]);
        m.fix_checksum(0xe0400, 44 + 8 + 12, 0xe0400 + 9);
        assert_eq!(parse(&m, 0xe0000).err(), Some("MADT entry length"));
        // XSDT pointing outside memory.
        m.write(0xe0100 + 36, &0xdead_0000u64.to_le_bytes());
        m.fix_checksum(0xe0100, 52, 0xe0100 + 9);
        assert!(parse(&m, 0xe0000).is_err());
    }
}
