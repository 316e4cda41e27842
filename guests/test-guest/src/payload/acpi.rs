//! `acpi`: RSDP from the boot info and by scanning 0xe0000..0xfffff, every checksum, the
//! table list and the MADT's CPUs and IOAPIC.

use super::Outcome;
use crate::bootinfo::BootInfo;
use crate::mem::PhysMem;
use crate::out::fact;
use crate::tables::acpi;

pub fn run(boot: &BootInfo) -> Outcome {
    fact("rsdp_boot").hex(boot.rsdp).nl();
    let scanned = acpi::scan_rsdp(&PhysMem, 0xe0000, 0x100000);
    fact("rsdp_scan").hex(scanned.unwrap_or(0)).nl();
    let rsdp = scanned.ok_or("no RSDP in 0xe0000..0xfffff")?;
    if boot.rsdp == 0 {
        return Err("the boot info carries no RSDP address");
    }
    if boot.rsdp != rsdp {
        return Err("boot info RSDP differs from the scanned one");
    }
    let info = acpi::parse(&PhysMem, rsdp)?;
    fact("acpi_revision").dec(u64::from(info.revision)).nl();
    fact("xsdt").hex(info.xsdt).nl();
    let mut o = fact("acpi_tables");
    for (i, sig) in info.sigs().iter().enumerate() {
        if i > 0 {
            o.s(",");
        }
        o.bytes(sig);
    }
    o.nl();
    fact("acpi_checksums").s("ok").nl();
    fact("acpi_hw_reduced").dec(u64::from(info.hw_reduced)).nl();
    fact("dsdt").hex(info.dsdt).nl();
    if let Some(sc) = info.sleep_control {
        fact("sleep_control").hex(sc).nl();
    }
    fact("madt_lapic").hex(u64::from(info.madt_lapic)).nl();
    fact("madt_cpus").dec(u64::from(info.madt_cpus)).nl();
    if let Some(a) = info.madt_ioapic {
        fact("madt_ioapic").hex(u64::from(a)).nl();
    }
    let has = |s: &[u8; 4]| info.sigs().contains(s);
    if !has(b"FACP") || !has(b"APIC") || !has(b"DSDT") {
        return Err("FACP, APIC or DSDT missing");
    }
    if info.madt_ioapic != Some(0xfec0_0000) {
        return Err("MADT has no IOAPIC at 0xfec00000");
    }
    if info.madt_cpus == 0 {
        return Err("MADT lists no enabled CPU");
    }
    Ok(())
}
