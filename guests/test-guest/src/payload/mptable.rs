//! `mptable`: the Intel MP floating pointer in 0xf0000..0xfffff and its configuration table.

use super::Outcome;
use crate::mem::PhysMem;
use crate::out::fact;
use crate::tables::mp;

pub fn run() -> Outcome {
    let info = mp::parse(&PhysMem, 0xf0000, 0x100000)?;
    fact("mp_floating_pointer").hex(info.fp_addr).nl();
    fact("mp_table").hex(info.table_addr).nl();
    fact("mp_spec_rev").dec(u64::from(info.spec_rev)).nl();
    fact("mp_entries").dec(u64::from(info.entries)).nl();
    fact("mp_lapic").hex(u64::from(info.lapic_addr)).nl();
    fact("mp_cpus").dec(u64::from(info.cpus)).nl();
    fact("mp_apic_ids_sequential")
        .dec(u64::from(info.apic_ids_sequential))
        .nl();
    if let Some(a) = info.ioapic_addr {
        fact("mp_ioapic").hex(u64::from(a)).nl();
    }
    if info.ioapic_addr.is_none() {
        return Err("no enabled IOAPIC entry");
    }
    if info.cpus == 0 {
        return Err("no enabled processor entry");
    }
    if !info.apic_ids_sequential {
        return Err("processor APIC ids are not 0..n-1");
    }
    if !info.bsp_ok {
        return Err("BP flag not on exactly the first processor");
    }
    Ok(())
}
