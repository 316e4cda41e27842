//! Intel MultiProcessor Specification 1.4 tables, for guests booted without ACPI.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::GuestMemoryMmap;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature and FPU|APIC feature flags, as firmware reports them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINTR: u8 = 3;
const ENTRY_LOCALINTR: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_IRQS: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table for {0} vCPUs does not fit below 1 MiB")]
    TooLarge(u8),
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The configuration table body entries (without header), and their count.
fn entries(cpus: u8) -> (Vec<u8>, u16) {
    let mut v = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        v.push(ENTRY_PROCESSOR);
        v.push(id);
        v.push(APIC_VERSION);
        v.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        v.extend(CPU_SIGNATURE.to_le_bytes());
        v.extend(CPU_FEATURES.to_le_bytes());
        v.extend([0u8; 8]);
        count += 1;
    }
    v.extend([ENTRY_BUS, 0]);
    v.extend(b"ISA   ");
    count += 1;
    let ioapic_id = cpus;
    v.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    v.extend((IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        let kind = if irq == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        v.extend([ENTRY_IOINTR, kind, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    v.extend([ENTRY_LOCALINTR, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    v.extend([ENTRY_LOCALINTR, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (v, count)
}

/// Writes the MP floating pointer and configuration table for `cpus` vCPUs at
/// [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let fp_addr = MPTABLE_START;
    let table_addr = fp_addr + 16;
    let (body, count) = entries(cpus);
    let length = 44 + body.len();
    if table_addr + length as u64 > HIMEM_START {
        return Err(MptableError::TooLarge(cpus));
    }
    let mut table = Vec::with_capacity(length);
    table.extend(b"PCMP");
    table.extend((length as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum
    table.extend(b"KAPSEL  ");
    table.extend(b"000000000000");
    table.extend(0u32.to_le_bytes()); // OEM table pointer
    table.extend(0u16.to_le_bytes()); // OEM table size
    table.extend(count.to_le_bytes());
    table.extend((APIC_START as u32).to_le_bytes());
    table.extend([0u8; 4]); // extended table length, checksum, reserved
    table.extend(body);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend(b"_MP_");
    fp.extend((table_addr as u32).to_le_bytes());
    fp.extend([1, 4, 0, 0, 0, 0, 0, 0]); // length (16-byte units), revision, checksum, features
    fp[10] = checksum(&fp);

    mem.write_slice(&fp, GuestAddress(fp_addr))
        .map_err(MptableError::Write)?;
    mem.write_slice(&table, GuestAddress(table_addr))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_processor_count() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        for cpus in [1u8, 4, 32, MAX_VCPUS as u8] {
            setup_mptable(&mem, cpus).unwrap();
            let mut fp = [0u8; 16];
            mem.read_slice(&mut fp, GuestAddress(MPTABLE_START))
                .unwrap();
            assert_eq!(&fp[..4], b"_MP_");
            assert_eq!(checksum(&fp), 0);
            let addr = u32::from_le_bytes(fp[4..8].try_into().unwrap());
            let len: u16 = mem.read_obj(GuestAddress(u64::from(addr) + 4)).unwrap();
            let mut t = vec![0u8; len as usize];
            mem.read_slice(&mut t, GuestAddress(u64::from(addr)))
                .unwrap();
            assert_eq!(&t[..4], b"PCMP");
            assert_eq!(checksum(&t), 0);
            let procs = t[44..44 + 20 * cpus as usize]
                .chunks(20)
                .filter(|e| e[0] == ENTRY_PROCESSOR)
                .count();
            assert_eq!(procs, cpus as usize);
        }
    }
}
