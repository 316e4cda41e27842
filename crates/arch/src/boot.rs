//! Boot protocol structures: Linux `boot_params` (zero page) and PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::memory::MemoryMapEntry;
use crate::GuestMemoryMmap;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_MAX_ENTRIES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("too many memory map entries ({0})")]
    TooManyE820Entries(usize),
    #[error("cannot write boot parameters into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// What every boot protocol hands the kernel.
#[derive(Debug, Clone)]
pub struct BootInfo<'a> {
    pub cmdline_addr: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: usize,
    pub initrd: Option<(u64, u64)>,
    pub memory_map: &'a [MemoryMapEntry],
    pub rsdp_addr: u64,
}

/// Writes the Linux zero page at [`ZERO_PAGE_START`]. `header` is the bzImage setup header,
/// or `None` for an ELF vmlinux entered at its 64-bit entry.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    info: &BootInfo<'_>,
) -> Result<(), BootError> {
    if info.memory_map.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyE820Entries(info.memory_map.len()));
    }
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp_addr;
    for (i, e) in info.memory_map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = info.memory_map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::Write)
}

/// Writes `hvm_start_info`, the module list (the initrd) and the memory map for PVH entry.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo<'_>) -> Result<(), BootError> {
    let max_entries = ((ZERO_PAGE_START - PVH_MEMMAP_START) as usize)
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if info.memory_map.len() > max_entries {
        return Err(BootError::TooManyE820Entries(info.memory_map.len()));
    }
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: info.cmdline_addr,
        rsdp_paddr: info.rsdp_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: info.memory_map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(BootError::Write)?;
        start.nr_modules = 1;
        start.modlist_paddr = PVH_MODLIST_START;
    }
    for (i, e) in info.memory_map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(BootError::Write)?;
    }
    mem.write_obj(start, GuestAddress(PVH_INFO_START))
        .map_err(BootError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::memory_map;

    #[test]
    fn zero_page_holds_e820_cmdline_and_initrd() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let map = memory_map(5 << 30);
        let info = BootInfo {
            cmdline_addr: CMDLINE_START,
            cmdline_len: 12,
            initrd: Some((0x300_0000, 0x1000)),
            memory_map: &map,
            rsdp_addr: ACPI_START,
        };
        write_boot_params(&mem, None, &info).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(p.e820_entries as usize, map.len());
        assert_eq!({ p.e820_table[4].addr }, RAM_64BIT_START);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
    }

    #[test]
    fn pvh_start_info_points_at_memmap() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let map = memory_map(128 << 20);
        let info = BootInfo {
            cmdline_addr: CMDLINE_START,
            cmdline_len: 3,
            initrd: None,
            memory_map: &map,
            rsdp_addr: ACPI_START,
        };
        write_pvh_start_info(&mem, &info).unwrap();
        let s: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(s.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(s.memmap_entries as usize, map.len());
        assert_eq!(s.nr_modules, 0);
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 3 * 24))
            .unwrap();
        assert_eq!(e.addr, HIMEM_START);
    }
}
