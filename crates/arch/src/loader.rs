//! Kernel and initrd placement in guest memory: ELF vmlinux (PVH entry when the note is there,
//! the 64-bit entry otherwise) or bzImage, through `linux-loader`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::layout::*;
use crate::memory::low_ram_end;
use crate::regs::BootEntry;
use crate::GuestMemoryMmap;

/// bzImage `xloadflags` bit: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Where initrds may end at the latest when the kernel does not say (2 GiB - 1).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot read kernel image")]
    Read(#[source] std::io::Error),
    #[error("not a kernel image: neither an ELF vmlinux nor a bzImage")]
    NotAKernel,
    #[error("kernel image does not fit in guest memory ({0})")]
    KernelLoad(String),
    #[error("bzImage does not support the 64-bit boot protocol (too old)")]
    No64BitEntry,
    #[error("initrd of {size} bytes does not fit in guest memory (at most {room} bytes free below {limit:#x})")]
    InitrdTooLarge { size: u64, room: u64, limit: u64 },
    #[error("cannot read initrd into guest memory")]
    InitrdRead(#[source] vm_memory::GuestMemoryError),
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How the boot vCPU enters it.
    pub entry: BootEntry,
    /// First guest address past the kernel (what it needs once decompressed, for bzImage).
    pub end: u64,
    /// The bzImage setup header, to be copied into `boot_params`.
    pub setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// Largest command line the kernel accepts (bytes, without the NUL).
    pub fn cmdline_max(&self) -> usize {
        match self.setup_header {
            Some(h) if h.version >= 0x206 && h.cmdline_size > 0 => h.cmdline_size as usize,
            _ => CMDLINE_MAX_SIZE,
        }
    }

    /// Highest address the initrd may end at.
    pub fn initrd_addr_max(&self) -> u64 {
        match self.setup_header {
            Some(h) if h.version >= 0x203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
            _ => DEFAULT_INITRD_ADDR_MAX,
        }
    }
}

fn is_elf(file: &mut File) -> Result<bool, LoaderError> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    let n = file.read(&mut magic).map_err(LoaderError::Read)?;
    file.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    Ok(n == 4 && &magic == b"\x7fELF")
}

/// Loads `kernel` (ELF or bzImage) into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel, LoaderError> {
    let highmem = Some(GuestAddress(HIMEM_START));
    if is_elf(kernel)? {
        let r = Elf::load(mem, None, kernel, highmem)
            .map_err(|e| LoaderError::KernelLoad(e.to_string()))?;
        let entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh { entry: addr.0 },
            _ => BootEntry::Linux64 {
                entry: r.kernel_load.0,
            },
        };
        return Ok(LoadedKernel {
            entry,
            end: r.kernel_end,
            setup_header: None,
        });
    }
    let r = BzImage::load(mem, None, kernel, highmem).map_err(|e| match e {
        linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        ) => LoaderError::NotAKernel,
        other => LoaderError::KernelLoad(other.to_string()),
    })?;
    let hdr = r.setup_header.ok_or(LoaderError::NotAKernel)?;
    if hdr.version < 0x20c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry);
    }
    let load = r.kernel_load.0;
    let end = load + (r.kernel_end - load).max(u64::from(hdr.init_size));
    Ok(LoadedKernel {
        entry: BootEntry::Linux64 {
            entry: load + BZIMAGE_64BIT_ENTRY_OFFSET,
        },
        end,
        setup_header: Some(hdr),
    })
}

/// Where an initrd of `size` bytes goes: as high as possible, page-aligned, below the
/// kernel's limit and the end of low RAM, above the kernel.
pub fn initrd_address(mem_size: u64, kernel: &LoadedKernel, size: u64) -> Result<u64, LoaderError> {
    let limit = low_ram_end(mem_size).min(kernel.initrd_addr_max().saturating_add(1));
    let floor = kernel.end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let room = limit.saturating_sub(floor);
    if size > room {
        return Err(LoaderError::InitrdTooLarge { size, room, limit });
    }
    Ok((limit - size) & !(PAGE_SIZE - 1))
}

/// Reads the initrd file into guest memory; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    initrd: &mut File,
) -> Result<(u64, u64), LoaderError> {
    let size = initrd.metadata().map_err(LoaderError::Read)?.len();
    let addr = initrd_address(mem_size, kernel, size)?;
    let mut remaining = size as usize;
    let mut at = GuestAddress(addr);
    while remaining > 0 {
        let slice = mem
            .get_slice(at, remaining)
            .map_err(LoaderError::InitrdRead)?;
        let n = initrd
            .read_volatile(&mut slice.clone())
            .map_err(|e| LoaderError::Read(std::io::Error::other(e.to_string())))?;
        if n == 0 {
            return Err(LoaderError::Read(std::io::Error::from(
                std::io::ErrorKind::UnexpectedEof,
            )));
        }
        remaining -= n;
        at = GuestAddress(at.0 + n as u64);
    }
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: BootEntry::Pvh { entry: 0x100_0000 },
            end,
            setup_header: None,
        }
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let k = elf_kernel(0x200_0000);
        let addr = initrd_address(128 << 20, &k, 10_000).unwrap();
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 10_000 <= 128 << 20);
        assert!(addr >= 0x200_0000);
    }

    #[test]
    fn initrd_respects_limit_for_large_guests() {
        let k = elf_kernel(0x200_0000);
        let addr = initrd_address(8 << 30, &k, 1 << 20).unwrap();
        assert!(addr + (1 << 20) <= DEFAULT_INITRD_ADDR_MAX + 1);
    }

    #[test]
    fn initrd_too_large_is_an_error() {
        let k = elf_kernel(0x200_0000);
        let err = initrd_address(64 << 20, &k, 63 << 20).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdTooLarge { .. }));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let mut f = tempfile();
        std::io::Write::write_all(&mut f, &[0x55u8; 8192]).unwrap();
        let err = load_kernel(&mem, &mut f).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel), "{err}");
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!("kapsel-loader-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
