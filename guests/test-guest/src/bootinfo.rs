//! What the VMM hands over at entry: PVH `hvm_start_info` or the Linux `boot_params` page,
//! normalized to one [`BootInfo`] (entry path, command line, RSDP address, memory map).

use crate::mem::Mem;

/// The entry path the loader took.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    /// `XEN_ELFNOTE_PHYS32_ENTRY`: 32-bit entry with `hvm_start_info` in ebx.
    Pvh,
    /// 64-bit Linux boot protocol at `e_entry` with `boot_params` in rsi.
    Elf64,
}

impl Entry {
    pub fn name(self) -> &'static str {
        match self {
            Entry::Pvh => "pvh",
            Entry::Elf64 => "elf64",
        }
    }
}

/// One memory-map entry; `kind` 1 = RAM, 2 = reserved (e820 and PVH use the same numbers).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub const MAX_MAP: usize = 128;
pub const MAX_CMDLINE: usize = 2048;

pub const PVH_MAGIC: u32 = 0x336e_c578;

// hvm_start_info offsets.
const PVH_VERSION: u64 = 4;
const PVH_CMDLINE: u64 = 24;
const PVH_RSDP: u64 = 32;
const PVH_MEMMAP: u64 = 40;
const PVH_MEMMAP_ENTRIES: u64 = 48;
const PVH_ENTRY_SIZE: u64 = 24;

// boot_params offsets.
const BP_ACPI_RSDP: u64 = 0x070;
const BP_EXT_CMD_LINE_PTR: u64 = 0x0c8;
const BP_E820_ENTRIES: u64 = 0x1e8;
const BP_CMD_LINE_PTR: u64 = 0x228;
const BP_E820_TABLE: u64 = 0x2d0;
const E820_ENTRY_SIZE: u64 = 20;

pub struct BootInfo {
    pub entry: Entry,
    pub info_addr: u64,
    pub rsdp: u64,
    pub map: [MemEntry; MAX_MAP],
    pub map_len: usize,
    /// Entries the VMM declared; more than `MAX_MAP` are counted but not stored.
    pub map_declared: u64,
    pub cmdline_addr: u64,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Set when the boot structure itself is unusable (bad magic, unreadable pointer).
    pub error: Option<&'static str>,
}

impl BootInfo {
    fn empty(entry: Entry, info_addr: u64) -> Self {
        Self {
            entry,
            info_addr,
            rsdp: 0,
            map: [MemEntry::default(); MAX_MAP],
            map_len: 0,
            map_declared: 0,
            cmdline_addr: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            error: None,
        }
    }

    /// Reads the boot structure at `info` for this entry path. Never fails: problems are
    /// recorded in `error` so the guest can still report them.
    pub fn parse(m: &dyn Mem, entry: Entry, info: u64) -> Self {
        let mut b = Self::empty(entry, info);
        let r = match entry {
            Entry::Pvh => b.parse_pvh(m),
            Entry::Elf64 => b.parse_boot_params(m),
        };
        if let Err(e) = r {
            b.error = Some(e);
        }
        b
    }

    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    pub fn map(&self) -> &[MemEntry] {
        &self.map[..self.map_len]
    }

    fn parse_pvh(&mut self, m: &dyn Mem) -> Result<(), &'static str> {
        let i = self.info_addr;
        if m.u32(i) != Some(PVH_MAGIC) {
            return Err("hvm_start_info magic is not 0x336ec578");
        }
        let version = m.u32(i + PVH_VERSION).ok_or("hvm_start_info unreadable")?;
        self.cmdline_addr = m.u64(i + PVH_CMDLINE).ok_or("hvm_start_info unreadable")?;
        self.rsdp = m.u64(i + PVH_RSDP).ok_or("hvm_start_info unreadable")?;
        self.read_cmdline(m)?;
        if version < 1 {
            return Err("hvm_start_info version 0 has no memory map");
        }
        let map = m.u64(i + PVH_MEMMAP).ok_or("hvm_start_info unreadable")?;
        let n = m
            .u32(i + PVH_MEMMAP_ENTRIES)
            .ok_or("hvm_start_info unreadable")?;
        self.map_declared = u64::from(n);
        for k in 0..u64::from(n).min(MAX_MAP as u64) {
            let e = map + k * PVH_ENTRY_SIZE;
            let entry = MemEntry {
                addr: m.u64(e).ok_or("memmap entry unreadable")?,
                size: m.u64(e + 8).ok_or("memmap entry unreadable")?,
                kind: m.u32(e + 16).ok_or("memmap entry unreadable")?,
            };
            self.push(entry);
        }
        Ok(())
    }

    fn parse_boot_params(&mut self, m: &dyn Mem) -> Result<(), &'static str> {
        let z = self.info_addr;
        let lo = m.u32(z + BP_CMD_LINE_PTR).ok_or("boot_params unreadable")?;
        let hi = m
            .u32(z + BP_EXT_CMD_LINE_PTR)
            .ok_or("boot_params unreadable")?;
        self.cmdline_addr = (u64::from(hi) << 32) | u64::from(lo);
        self.rsdp = m.u64(z + BP_ACPI_RSDP).ok_or("boot_params unreadable")?;
        self.read_cmdline(m)?;
        let n = m.u8(z + BP_E820_ENTRIES).ok_or("boot_params unreadable")?;
        self.map_declared = u64::from(n);
        for k in 0..u64::from(n).min(MAX_MAP as u64) {
            let e = z + BP_E820_TABLE + k * E820_ENTRY_SIZE;
            let entry = MemEntry {
                addr: m.u64(e).ok_or("e820 entry unreadable")?,
                size: m.u64(e + 8).ok_or("e820 entry unreadable")?,
                kind: m.u32(e + 16).ok_or("e820 entry unreadable")?,
            };
            self.push(entry);
        }
        Ok(())
    }

    fn push(&mut self, e: MemEntry) {
        if self.map_len < MAX_MAP {
            self.map[self.map_len] = e;
            self.map_len += 1;
        }
    }

    /// Copies the NUL-terminated command line (an address of 0 means none).
    fn read_cmdline(&mut self, m: &dyn Mem) -> Result<(), &'static str> {
        if self.cmdline_addr == 0 {
            return Ok(());
        }
        for k in 0..MAX_CMDLINE {
            let c = m
                .u8(self.cmdline_addr + k as u64)
                .ok_or("command line unreadable")?;
            if c == 0 {
                break;
            }
            self.cmdline[k] = c;
            self.cmdline_len = k + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::VecMem;

    #[test]
    fn parses_pvh_start_info() {
        let mut m = VecMem::new(0x1000, 0x4000);
        let si = 0x1000;
        m.write(si, &PVH_MAGIC.to_le_bytes());
        m.write(si + 4, &1u32.to_le_bytes());
        m.write(si + 24, &0x2000u64.to_le_bytes());
        m.write(si + 32, &0xe0000u64.to_le_bytes());
        m.write(si + 40, &0x3000u64.to_le_bytes());
        m.write(si + 48, &2u32.to_le_bytes());
        m.write(0x2000, b"test=acpi quiet\0");
        for (k, (a, s, t)) in [(0u64, 0x9fc00u64, 1u32), (0x100000, 0x3f00000, 1)]
            .iter()
            .enumerate()
        {
            let e = 0x3000 + k as u64 * 24;
            m.write(e, &a.to_le_bytes());
            m.write(e + 8, &s.to_le_bytes());
            m.write(e + 16, &t.to_le_bytes());
        }
        let b = BootInfo::parse(&m, Entry::Pvh, si);
        assert_eq!(b.error, None);
        assert_eq!(b.cmdline(), b"test=acpi quiet");
        assert_eq!(b.rsdp, 0xe0000);
        assert_eq!(b.map().len(), 2);
        assert_eq!(
            b.map()[1],
            MemEntry {
                addr: 0x100000,
                size: 0x3f00000,
                kind: 1
            }
        );
    }

    #[test]
    fn bad_pvh_magic_is_an_error_not_a_fault() {
        let m = VecMem::new(0x1000, 0x100);
        let b = BootInfo::parse(&m, Entry::Pvh, 0x1000);
        assert!(b.error.is_some());
        let b = BootInfo::parse(&m, Entry::Pvh, 0xdead_0000);
        assert!(b.error.is_some());
    }

    #[test]
    fn parses_boot_params_e820() {
        let mut m = VecMem::new(0x7000, 0x20000);
        let z = 0x7000;
        m.write(z + 0x070, &0xe0000u64.to_le_bytes());
        m.write(z + 0x228, &0x20000u32.to_le_bytes());
        m.write(0x20000, b"test=hello\0");
        m.write(z + 0x1e8, &[1]);
        m.write(z + 0x2d0, &0u64.to_le_bytes());
        m.write(z + 0x2d8, &0x9fc00u64.to_le_bytes());
        m.write(z + 0x2e0, &1u32.to_le_bytes());
        let b = BootInfo::parse(&m, Entry::Elf64, z);
        assert_eq!(b.error, None);
        assert_eq!(b.cmdline(), b"test=hello");
        assert_eq!(
            b.map(),
            &[MemEntry {
                addr: 0,
                size: 0x9fc00,
                kind: 1
            }]
        );
    }
}
