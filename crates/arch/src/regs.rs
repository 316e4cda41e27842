//! Initial vCPU state: general registers, segment/control registers, FPU, MSRs and the LAPIC
//! local interrupt pins, for each boot entry kapsel supports.

use hv::types::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use hv::{HvError, Vcpu};
use vm_memory::{Bytes, GuestAddress};

use crate::gdt::{segment_from_gdt, GDT_32, GDT_64};
use crate::layout::*;
use crate::paging::{setup_identity_map, PagingError};
use crate::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT into guest memory")]
    WriteTables(#[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Paging(#[from] PagingError),
    #[error("cannot build the MSR list")]
    MsrList,
    #[error(transparent)]
    Hv(#[from] HvError),
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, identity paging, `rsi` = zero page.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh { entry: u64 },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_NE: u64 = 0x20;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Sets up the boot processor (vCPU 0) for `entry`: memory tables it needs, then registers.
pub fn setup_boot_vcpu(
    vcpu: &Vcpu,
    mem: &GuestMemoryMmap,
    entry: BootEntry,
) -> Result<(), RegsError> {
    let gdt = match entry {
        BootEntry::Linux64 { .. } => &GDT_64,
        BootEntry::Pvh { .. } => &GDT_32,
    };
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(RegsError::WriteTables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteTables)?;

    let mut sregs = vcpu.get_sregs()?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment_from_gdt(gdt, 2);
    sregs.cs = segment_from_gdt(gdt, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt, 3);

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry } => {
            sregs.cr3 = setup_identity_map(mem)?;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootEntry::Pvh { entry } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = PVH_INFO_START;
        }
    }
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)?;
    Ok(())
}

/// The x87/SSE state Linux expects at entry (FCW 0x37f, MXCSR 0x1f80).
pub fn setup_fpu(vcpu: &Vcpu) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    Ok(vcpu.set_fpu(&fpu)?)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The boot MSR values: syscall MSRs cleared, fast strings, MTRR default WB. The TSC is left
/// alone: KVM starts every vCPU's TSC in sync, and writing it per vCPU at different moments
/// makes Linux mark the TSC unstable.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Writes [`boot_msr_entries`] to `vcpu`.
pub fn setup_msrs(vcpu: &Vcpu) -> Result<(), RegsError> {
    let msrs = Msrs::from_entries(&boot_msr_entries()).map_err(|_| RegsError::MsrList)?;
    Ok(vcpu.set_msrs(&msrs)?)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as firmware does on a PC.
pub fn setup_lint(vcpu: &Vcpu) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic()?;
    let lvt0 = get_reg(&lapic.regs, APIC_LVT0);
    set_reg(
        &mut lapic.regs,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_reg(&lapic.regs, APIC_LVT1);
    set_reg(
        &mut lapic.regs,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    Ok(vcpu.set_lapic(&lapic)?)
}

/// The sregs of a freshly created vCPU are KVM's reset state; exposed for tests.
pub fn is_long_mode(sregs: &kvm_sregs) -> bool {
    sregs.efer & EFER_LMA != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_only_mode_bits() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }

    #[test]
    fn lapic_register_roundtrip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_reg(&mut regs, APIC_LVT1, 0xdead_beef);
        assert_eq!(get_reg(&regs, APIC_LVT1), 0xdead_beef);
    }

    #[test]
    fn boot_msrs_are_unique() {
        let msrs = boot_msr_entries();
        let mut idx: Vec<u32> = msrs.iter().map(|m| m.index).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), msrs.len());
    }
}
