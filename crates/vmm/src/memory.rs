//! Guest RAM: anonymous host mappings laid out by [`arch::memory`] and registered with KVM.

use arch::GuestMemoryMmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory_backing::MemoryBacking;
use crate::VmmError;

/// Maps `size` bytes of guest RAM: lazily backed (untouched pages cost nothing) unless
/// `backing` asks for hugepages, preallocation or locking.
pub fn create_guest_memory(size: u64, backing: MemoryBacking) -> Result<GuestMemoryMmap, VmmError> {
    let ranges: Vec<(GuestAddress, usize)> = arch::memory::ram_regions(size)
        .into_iter()
        .map(|(addr, len)| (GuestAddress(addr), len as usize))
        .collect();
    let mem = if backing.hugepages {
        crate::memory_backing::hugepage_memory(&ranges)?
    } else {
        GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmmError::Memory { size, source })?
    };
    crate::memory_backing::commit(&mem, backing)?;
    Ok(mem)
}

/// Gives every region of `mem` to the VM as one KVM memory slot each.
pub fn register_guest_memory(vm: &hv::Vm, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region.as_ptr() as u64;
        // SAFETY: the region is a live mapping owned by `mem`, which the VMM keeps alive for
        // as long as the VM runs (both are dropped together at the end of the process).
        unsafe {
            vm.set_user_memory_region(slot as u32, region.start_addr().0, region.len(), host_addr)
        }?;
    }
    Ok(())
}
