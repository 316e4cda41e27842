//! The IDT, the trap dispatcher the assembly stubs call, and interrupt counters.
//!
//! Exceptions end the test with `TEST-FAIL` (so a guest bug shows up as a readable line,
//! not as a triple fault); timer interrupts only count ticks and acknowledge.

use crate::io;
use crate::out::con;
use crate::out::{Buf, Sink};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Vector layout (the stubs in `asm/common.S` cover 0..=0x4f and 0xff).
pub const PIC_BASE: u8 = 0x20;
pub const PIC2_BASE: u8 = 0x28;
pub const IOAPIC_BASE_VECTOR: u8 = 0x30;
pub const LAPIC_TIMER_VECTOR: u8 = 0x48;
pub const SPURIOUS_VECTOR: u8 = 0xff;
const STUB_COUNT: usize = 0x51;

/// Ticks seen since the counters were last cleared.
pub static LAPIC_TICKS: AtomicU32 = AtomicU32::new(0);
pub static PIT_TICKS: AtomicU32 = AtomicU32::new(0);
/// The vector of the last PIT tick (tells the PIC path from IOAPIC pin 0 or 2).
pub static PIT_VECTOR: AtomicU32 = AtomicU32::new(0);
pub static OTHER_IRQS: AtomicU32 = AtomicU32::new(0);
/// LAPIC MMIO base for EOI; set by the interrupts payload from IA32_APIC_BASE.
pub static LAPIC_BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);

static TEST_NAME: [AtomicU8; 32] = [const { AtomicU8::new(0) }; 32];
static TEST_LEN: AtomicUsize = AtomicUsize::new(0);

/// Remembers the running test's name for failure lines printed from traps and panics.
pub fn set_current_test(name: &[u8]) {
    let n = name.len().min(TEST_NAME.len());
    for (slot, &b) in TEST_NAME.iter().zip(&name[..n]) {
        slot.store(b, Ordering::Relaxed);
    }
    TEST_LEN.store(n, Ordering::SeqCst);
}

/// The running test's name (truncated to 32 bytes).
pub fn current_test() -> Buf<32> {
    let mut b = Buf::new();
    for slot in &TEST_NAME[..TEST_LEN.load(Ordering::SeqCst)] {
        b.put(slot.load(Ordering::Relaxed));
    }
    b
}

/// What the stubs push, lowest address first.
#[repr(C)]
pub struct TrapFrame {
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

#[repr(C, packed)]
struct DescriptorPtr {
    limit: u16,
    base: u64,
}

extern "C" {
    static trap_stub_table: [u64; STUB_COUNT];
}

fn stub_vector(i: usize) -> usize {
    if i < STUB_COUNT - 1 {
        i
    } else {
        SPURIOUS_VECTOR as usize
    }
}

/// Exception vectors, installed at boot by [`install_idt`].
const EXCEPTIONS: core::ops::Range<usize> = 0..32;
/// Interrupt vectors (stub indexes), installed by [`install_irq_vectors`].
const IRQS: core::ops::Range<usize> = 32..STUB_COUNT;

/// Writes the interrupt gates for these stub indexes (code selector 0x08).
fn fill_gates(stubs: core::ops::Range<usize>) {
    let idt = core::ptr::addr_of_mut!(IDT);
    for i in stubs {
        // SAFETY: `trap_stub_table` is a read-only table of STUB_COUNT addresses in
        // asm/common.S, linked into every guest binary; i < STUB_COUNT.
        let handler = unsafe {
            core::ptr::addr_of!(trap_stub_table)
                .cast::<u64>()
                .add(i)
                .read()
        };
        let v = stub_vector(i);
        let low = (handler & 0xffff)
            | (0x08 << 16)
            | (0x8e00 << 32) // present, DPL 0, 64-bit interrupt gate
            | ((handler >> 16) & 0xffff) << 48;
        let high = handler >> 32;
        // SAFETY: single vCPU with interrupts off; v < 256 so 2*v+1 < 512, and the CPU
        // reads a gate only when delivering that vector, which cannot happen mid-write.
        unsafe {
            (*idt).0[2 * v] = low;
            (*idt).0[2 * v + 1] = high;
        }
    }
}

/// Installs the exception gates and loads the IDT. Interrupt gates stay not-present
/// until [`install_irq_vectors`]: every gate costs guest instructions at boot, and on
/// kvm_pvm each one is emulated.
pub fn install_idt() {
    fill_gates(EXCEPTIONS);
    let idt = core::ptr::addr_of_mut!(IDT);
    let ptr = DescriptorPtr {
        limit: (512 * 8 - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: `ptr` describes the static IDT, which lives forever.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags))
    }
}

/// Installs the gates for the PIC, IOAPIC, LAPIC timer and spurious vectors.
pub fn install_irq_vectors() {
    fill_gates(IRQS);
}

/// Loads an empty IDT: the next exception escalates to a triple fault.
pub fn load_empty_idt() {
    let ptr = DescriptorPtr { limit: 0, base: 0 };
    // SAFETY: deliberately invalid IDT; only used right before forcing a triple fault.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags))
    }
}

fn lapic_eoi() {
    io::mmio_write32(LAPIC_BASE.load(Ordering::Relaxed) + 0xb0, 0);
}

/// Called from `trap_common` with the saved frame.
///
/// # Safety
/// Only the assembly stubs call this, with a pointer to the frame they just pushed.
#[no_mangle]
pub unsafe extern "C" fn guest_trap(frame: *const TrapFrame) {
    // SAFETY: the stub passes its own stack frame, valid for the duration of this call.
    let f = unsafe { &*frame };
    let v = f.vector as u8;
    match v {
        0..=31 => exception(f),
        PIC_BASE..=0x27 => {
            if v == PIC_BASE {
                pit_tick(v);
            } else {
                OTHER_IRQS.fetch_add(1, Ordering::Relaxed);
            }
            io::outb(0x20, 0x20);
        }
        PIC2_BASE..=0x2f => {
            OTHER_IRQS.fetch_add(1, Ordering::Relaxed);
            io::outb(0xa0, 0x20);
            io::outb(0x20, 0x20);
        }
        LAPIC_TIMER_VECTOR => {
            LAPIC_TICKS.fetch_add(1, Ordering::Relaxed);
            lapic_eoi();
        }
        _ if (IOAPIC_BASE_VECTOR..LAPIC_TIMER_VECTOR).contains(&v) => {
            let pin = v - IOAPIC_BASE_VECTOR;
            if pin == 0 || pin == 2 {
                pit_tick(v);
            } else {
                OTHER_IRQS.fetch_add(1, Ordering::Relaxed);
            }
            lapic_eoi();
        }
        SPURIOUS_VECTOR => {}
        _ => {
            OTHER_IRQS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn pit_tick(v: u8) {
    PIT_TICKS.fetch_add(1, Ordering::Relaxed);
    PIT_VECTOR.store(u32::from(v), Ordering::Relaxed);
}

fn exception(f: &TrapFrame) -> ! {
    con()
        .s("TEST-FAIL ")
        .bytes(current_test().as_bytes())
        .s(": exception ")
        .dec(f.vector)
        .s(" error=")
        .hex(f.error)
        .s(" rip=")
        .hex(f.rip)
        .s(" cr2=")
        .hex(io::read_cr2())
        .nl();
    crate::power::reset()
}
