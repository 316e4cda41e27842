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

/// At most this many memory-map entries are read (kapsel writes five).
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

/// The boot structure, read in place: nothing is copied (on kvm_pvm every guest
/// instruction is emulated, so copying kilobytes at boot costs milliseconds).
pub struct BootInfo<'m> {
    mem: &'m dyn Mem,
    pub entry: Entry,
    pub info_addr: u64,
    pub rsdp: u64,
    pub cmdline_addr: u64,
    cmdline: &'m [u8],
    map_addr: u64,
    map_stride: u64,
    /// Entries the VMM declared; more than `MAX_MAP` are counted but not read.
    pub map_declared: u64,
    /// Set when the boot structure itself is unusable (bad magic, unreadable pointer).
    pub error: Option<&'static str>,
}

impl<'m> BootInfo<'m> {
    /// Reads the boot structure at `info` for this entry path. Never fails: problems are
    /// recorded in `error` so the guest can still report them.
    pub fn parse(mem: &'m dyn Mem, entry: Entry, info: u64) -> Self {
        let mut b = Self {
            mem,
            entry,
            info_addr: info,
            rsdp: 0,
            cmdline_addr: 0,
            cmdline: &[],
            map_addr: 0,
            map_stride: 0,
            map_declared: 0,
            error: None,
        };
        let r = match entry {
            Entry::Pvh => b.parse_pvh(),
            Entry::Elf64 => b.parse_boot_params(),
        };
        if let Err(e) = r.and_then(|()| b.check_map_readable()) {
            b.error = Some(e);
        }
        b
    }

    pub fn cmdline(&self) -> &'m [u8] {
        self.cmdline
    }

    /// Number of memory-map entries that can be read (declared, capped at `MAX_MAP`).
    pub fn map_len(&self) -> usize {
        self.map_declared.min(MAX_MAP as u64) as usize
    }

    /// Memory-map entry `i` (both formats start with addr, size, type).
    pub fn map_entry(&self, i: usize) -> Option<MemEntry> {
        if i >= self.map_len() {
            return None;
        }
        let e = self.map_addr.checked_add(i as u64 * self.map_stride)?;
        Some(MemEntry {
            addr: self.mem.u64(e)?,
            size: self.mem.u64(e + 8)?,
            kind: self.mem.u32(e + 16)?,
        })
    }

    /// The readable memory-map entries, in order.
    pub fn map(&self) -> impl Iterator<Item = MemEntry> + '_ {
        (0..self.map_len()).map_while(|i| self.map_entry(i))
    }

    fn check_map_readable(&self) -> Result<(), &'static str> {
        if self.map().count() == self.map_len() {
            Ok(())
        } else {
            Err("memory map entry unreadable")
        }
    }

    fn parse_pvh(&mut self) -> Result<(), &'static str> {
        let (m, i) = (self.mem, self.info_addr);
        if m.u32(i) != Some(PVH_MAGIC) {
            return Err("hvm_start_info magic is not 0x336ec578");
        }
        let version = m.u32(i + PVH_VERSION).ok_or("hvm_start_info unreadable")?;
        self.cmdline_addr = m.u64(i + PVH_CMDLINE).ok_or("hvm_start_info unreadable")?;
        self.rsdp = m.u64(i + PVH_RSDP).ok_or("hvm_start_info unreadable")?;
        self.read_cmdline()?;
        if version < 1 {
            return Err("hvm_start_info version 0 has no memory map");
        }
        self.map_addr = m.u64(i + PVH_MEMMAP).ok_or("hvm_start_info unreadable")?;
        self.map_stride = PVH_ENTRY_SIZE;
        let n = m
            .u32(i + PVH_MEMMAP_ENTRIES)
            .ok_or("hvm_start_info unreadable")?;
        self.map_declared = u64::from(n);
        Ok(())
    }

    fn parse_boot_params(&mut self) -> Result<(), &'static str> {
        let (m, z) = (self.mem, self.info_addr);
        let lo = m.u32(z + BP_CMD_LINE_PTR).ok_or("boot_params unreadable")?;
        let hi = m
            .u32(z + BP_EXT_CMD_LINE_PTR)
            .ok_or("boot_params unreadable")?;
        self.cmdline_addr = (u64::from(hi) << 32) | u64::from(lo);
        self.rsdp = m.u64(z + BP_ACPI_RSDP).ok_or("boot_params unreadable")?;
        self.read_cmdline()?;
        self.map_addr = z + BP_E820_TABLE;
        self.map_stride = E820_ENTRY_SIZE;
        let n = m.u8(z + BP_E820_ENTRIES).ok_or("boot_params unreadable")?;
        self.map_declared = u64::from(n);
        Ok(())
    }

    /// Finds the NUL-terminated command line (an address of 0 means none), in place.
    fn read_cmdline(&mut self) -> Result<(), &'static str> {
        if self.cmdline_addr == 0 {
            return Ok(());
        }
        let mut len = 0;
        while len < MAX_CMDLINE {
            match self.mem.u8(self.cmdline_addr + len as u64) {
                Some(0) => break,
                Some(_) => len += 1,
                None => return Err("command line unreadable"),
            }
        }
        self.cmdline = self
            .mem
            .bytes(self.cmdline_addr, len)
            .ok_or("command line unreadable")?;
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
        assert_eq!(b.map().count(), 2);
        assert_eq!(
            b.map().nth(1).expect("two entries"),
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
    fn unreadable_memory_map_is_an_error() {
        let mut m = VecMem::new(0x1000, 0x100);
        m.write(0x1000, &PVH_MAGIC.to_le_bytes());
        m.write(0x1004, &1u32.to_le_bytes());
        m.write(0x1000 + 40, &0xdead_0000u64.to_le_bytes());
        m.write(0x1000 + 48, &3u32.to_le_bytes());
        let b = BootInfo::parse(&m, Entry::Pvh, 0x1000);
        assert_eq!(b.error, Some("memory map entry unreadable"));
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
            b.map().collect::<Vec<_>>(),
            [MemEntry {
                addr: 0,
                size: 0x9fc00,
                kind: 1
            }]
        );
    }
}
