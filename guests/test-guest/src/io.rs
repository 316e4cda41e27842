//! Port I/O, MMIO and the few privileged CPU instructions the payloads use.

use core::arch::asm;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects; the guest owns the whole machine.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads a 32-bit MMIO register at an identity-mapped physical address below 4 GiB.
pub fn mmio_read32(addr: u64) -> u32 {
    debug_assert!(addr != 0 && addr < (1 << 32) && addr.is_multiple_of(4));
    // SAFETY: the first 4 GiB are identity-mapped by both entry paths; the callers pass
    // aligned device addresses (LAPIC, IOAPIC, the PCI hole), never Rust-owned memory.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes a 32-bit MMIO register; see [`mmio_read32`].
pub fn mmio_write32(addr: u64, v: u32) {
    debug_assert!(addr != 0 && addr < (1 << 32) && addr.is_multiple_of(4));
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Reads an 8-bit MMIO register; see [`mmio_read32`].
pub fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers read architectural MSRs that exist on every x86-64 CPU (APIC base).
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects; we run at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Enables interrupts, halts until one arrives and disables them again. Without `nostack`
/// (and with the C ABI clobbers) the compiler keeps nothing in the red zone or in
/// caller-saved registers across it, so handlers cannot corrupt live state.
pub fn wait_for_interrupt() {
    // SAFETY: the IDT is installed before any payload enables interrupts; handlers save
    // and restore every register they touch.
    unsafe { asm!("sti", "hlt", "cli", clobber_abi("C")) }
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
