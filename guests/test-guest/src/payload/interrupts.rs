//! `interrupts`: the LAPIC timer (periodic) and the PIT on IRQ0, counted with `sti; hlt`.
//!
//! The PIT is first routed through the IOAPIC (pins 0 and 2, since VMMs differ on whether
//! ISA IRQ0 lands on GSI 0 or 2); if no tick arrives that way it falls back to the 8259 PIC
//! in virtual-wire mode (LAPIC LINT0 = ExtINT).

use super::Outcome;
use crate::io::{self, inb, mmio_read32, mmio_write32, outb};
use crate::out::fact;
use crate::trap::{
    IOAPIC_BASE_VECTOR, LAPIC_BASE, LAPIC_TICKS, LAPIC_TIMER_VECTOR, OTHER_IRQS, PIC2_BASE,
    PIC_BASE, PIT_TICKS, PIT_VECTOR, SPURIOUS_VECTOR,
};
use core::sync::atomic::Ordering;

const IA32_APIC_BASE: u32 = 0x1b;
const IOAPIC: u64 = 0xfec0_0000;

// LAPIC registers.
const ID: u64 = 0x20;
const TPR: u64 = 0x80;
const SVR: u64 = 0xf0;
const LVT_TIMER: u64 = 0x320;
const LVT_LINT0: u64 = 0x350;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_DIVIDE: u64 = 0x3e0;
const MASKED: u32 = 1 << 16;
const PERIODIC: u32 = 1 << 17;

/// Ticks wanted from each source.
const WANT: u32 = 20;
/// LAPIC ticks (~1 ms each) after which the IOAPIC route counts as silent.
const IOAPIC_GRACE: u32 = 300;
/// LAPIC ticks after which the test gives up.
const GIVE_UP: u32 = 3000;

struct Lapic(u64);

impl Lapic {
    fn read(&self, reg: u64) -> u32 {
        mmio_read32(self.0 + reg)
    }
    fn write(&self, reg: u64, v: u32) {
        mmio_write32(self.0 + reg, v);
    }
}

fn ioapic_write(index: u32, v: u32) {
    mmio_write32(IOAPIC, index);
    mmio_write32(IOAPIC + 0x10, v);
}

fn ioapic_read(index: u32) -> u32 {
    mmio_write32(IOAPIC, index);
    mmio_read32(IOAPIC + 0x10)
}

/// Routes an IOAPIC pin to `vector` on APIC `dest` (fixed, physical, edge, active high).
fn ioapic_route(pin: u32, vector: u8, dest: u32, masked: bool) {
    let low = u32::from(vector) | if masked { MASKED } else { 0 };
    ioapic_write(0x10 + 2 * pin + 1, dest << 24);
    ioapic_write(0x10 + 2 * pin, low);
}

/// Remaps the 8259s to PIC_BASE/PIC2_BASE and masks every line but `unmask`.
fn pic_init(unmask_master: u8) {
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, PIC_BASE);
    outb(0xa1, PIC2_BASE);
    outb(0x21, 4);
    outb(0xa1, 2);
    outb(0x21, 1);
    outb(0xa1, 1);
    outb(0x21, !unmask_master);
    outb(0xa1, 0xff);
}

/// PIT channel 0, mode 2 (rate generator), ~1 kHz.
fn pit_start() {
    let divisor: u16 = 1193;
    outb(0x43, 0x34);
    outb(0x40, divisor as u8);
    outb(0x40, (divisor >> 8) as u8);
}

fn wait_until(done: impl Fn(u32, u32) -> bool) {
    loop {
        let (l, p) = (
            LAPIC_TICKS.load(Ordering::Relaxed),
            PIT_TICKS.load(Ordering::Relaxed),
        );
        if done(l, p) {
            return;
        }
        io::wait_for_interrupt();
    }
}

pub fn run() -> Outcome {
    crate::trap::install_irq_vectors();
    let apic_base_msr = io::rdmsr(IA32_APIC_BASE);
    fact("apic_base_msr").hex(apic_base_msr).nl();
    if apic_base_msr & (1 << 11) == 0 {
        return Err("LAPIC globally disabled in IA32_APIC_BASE");
    }
    let base = apic_base_msr & 0xffff_f000;
    LAPIC_BASE.store(base, Ordering::SeqCst);
    let lapic = Lapic(base);
    let apic_id = lapic.read(ID) >> 24;
    fact("lapic_id").dec(u64::from(apic_id)).nl();
    let ioapic_pins = ((ioapic_read(1) >> 16) & 0xff) + 1;
    fact("ioapic_pins").dec(u64::from(ioapic_pins)).nl();

    pic_init(0);
    lapic.write(TPR, 0);
    lapic.write(SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    lapic.write(LVT_LINT0, MASKED);
    for pin in 0..ioapic_pins.min(24) {
        ioapic_route(
            pin,
            IOAPIC_BASE_VECTOR + pin as u8,
            apic_id,
            !(pin == 0 || pin == 2),
        );
    }
    LAPIC_TICKS.store(0, Ordering::SeqCst);
    PIT_TICKS.store(0, Ordering::SeqCst);

    // LAPIC timer: divide by 16, 62500 counts = 1 ms at KVM's 1 GHz APIC bus.
    lapic.write(TIMER_DIVIDE, 0x3);
    lapic.write(LVT_TIMER, u32::from(LAPIC_TIMER_VECTOR) | PERIODIC);
    lapic.write(TIMER_INITIAL, 62_500);
    pit_start();

    wait_until(|l, p| (l >= WANT && p >= WANT) || l >= IOAPIC_GRACE || p >= GIVE_UP);
    let mut via = "ioapic";
    if PIT_TICKS.load(Ordering::SeqCst) == 0 {
        // Fall back to the 8259 in virtual-wire mode.
        for pin in [0, 2] {
            ioapic_route(pin, IOAPIC_BASE_VECTOR + pin as u8, apic_id, true);
        }
        lapic.write(LVT_LINT0, 0x700); // ExtINT, unmasked
        pic_init(0x01);
        via = "pic";
        wait_until(|l, p| (l >= WANT && p >= WANT) || l >= GIVE_UP || p >= GIVE_UP);
    }

    // Quiesce everything before reporting.
    lapic.write(LVT_TIMER, MASKED);
    lapic.write(TIMER_INITIAL, 0);
    for pin in 0..ioapic_pins.min(24) {
        ioapic_route(pin, IOAPIC_BASE_VECTOR + pin as u8, apic_id, true);
    }
    pic_init(0);
    let _ = inb(0x61);

    let lapic_ticks = LAPIC_TICKS.load(Ordering::SeqCst);
    let pit_ticks = PIT_TICKS.load(Ordering::SeqCst);
    fact("lapic_ticks").dec(u64::from(lapic_ticks)).nl();
    fact("pit_ticks").dec(u64::from(pit_ticks)).nl();
    if pit_ticks > 0 {
        let v = PIT_VECTOR.load(Ordering::SeqCst) as u8;
        let route = match v {
            PIC_BASE => "pic-irq0",
            _ if v == IOAPIC_BASE_VECTOR => "ioapic-pin0",
            _ => "ioapic-pin2",
        };
        fact("pit_via").s(via).s(":").s(route).nl();
    }
    fact("other_irqs")
        .dec(u64::from(OTHER_IRQS.load(Ordering::SeqCst)))
        .nl();
    if lapic_ticks == 0 {
        return Err("no LAPIC timer interrupt");
    }
    if pit_ticks == 0 {
        return Err("no PIT interrupt (IOAPIC pin 0/2 or PIC IRQ0)");
    }
    Ok(())
}
