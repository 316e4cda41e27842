//! ACPI tables: RSDP → XSDT → FADT (hardware-reduced, pointing at DSDT), MADT. Built with the
//! `acpi_tables` crate and written into the BIOS area at [`ACPI_START`].
//!
//! The platform is "hardware-reduced" ACPI (no PM1 event blocks, no SCI, no PM timer): power
//! off goes through the sleep control register at [`ACPI_PM_PORT`], reset through the reset
//! register right behind it, as Firecracker and Cloud Hypervisor do.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::GuestMemoryMmap;

mod pci;

const OEM_ID: [u8; 6] = *b"KAPSEL";
const OEM_TABLE_ID: [u8; 8] = *b"KAPSELVM";
const OEM_REVISION: u32 = 1;
/// FADT IAPC_BOOT_ARCH: legacy devices present, 8042 present.
const IAPC_LEGACY_DEVICES_8042: u16 = 0x3;
/// MADT flags: PCAT_COMPAT (dual 8259 PICs installed).
const MADT_PCAT_COMPAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables ({0} bytes) do not fit in their {ACPI_SIZE}-byte area")]
    TooLarge(usize),
    #[error("cannot write ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// One legacy PNP device: `_HID` and `_CRS` with its I/O ports and interrupt.
fn legacy_device(name: &str, hid: &str, ports: &[(u16, u8)], irq: Option<u32>) -> Vec<u8> {
    let ios: Vec<aml::IO> = ports
        .iter()
        .map(|&(port, len)| aml::IO::new(port, port, 0, len))
        .collect();
    let interrupt = irq.map(|n| aml::Interrupt::new(true, true, false, false, n));
    let mut resources: Vec<&dyn Aml> = ios.iter().map(|io| io as &dyn Aml).collect();
    if let Some(i) = &interrupt {
        resources.push(i);
    }
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::EISAName::new(hid);
    let hid_name = aml::Name::new(aml::Path::new("_HID"), &hid);
    let crs_name = aml::Name::new(aml::Path::new("_CRS"), &crs);
    bytes_of(&aml::Device::new(
        aml::Path::new(name),
        vec![&hid_name, &crs_name],
    ))
}

/// The DSDT body: the legacy devices (so Linux binds its PNP drivers) and the S5 state.
fn dsdt() -> Vec<u8> {
    let mut devices = legacy_device("COM1", "PNP0501", &[(0x3f8, 8)], Some(4));
    devices.extend(legacy_device(
        "PS2K",
        "PNP0303",
        &[(0x60, 1), (0x64, 1)],
        Some(1),
    ));
    devices.extend(legacy_device("RTC_", "PNP0B00", &[(0x70, 2)], Some(8)));
    devices.extend(pci::host_bridge());
    devices.extend(pci::motherboard_resources());
    let mut body = aml::Scope::raw(aml::Path::new("\\_SB_"), devices);
    let s5_type = ACPI_S5_SLEEP_TYPE;
    let s5_package = aml::Package::new(vec![&s5_type]);
    body.extend(bytes_of(&aml::Name::new(
        aml::Path::new("_S5_"),
        &s5_package,
    )));
    body
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    let port = u64::from(ACPI_PM_PORT);
    f.sleep_control_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port);
    f.sleep_status_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port + 1,
    );
    f.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port + 2,
    );
    f.reset_value = ACPI_RESET_VALUE;
    f.iapc_boot_arch = IAPC_LEGACY_DEVICES_8042.into();
    bytes_of(&f.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, IOAPIC_START as u32, 0));
    let mut bytes = bytes_of(&madt);
    // Set PCAT_COMPAT in the flags field (offset 40) and fix the checksum (offset 9).
    bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut bytes);
    bytes
}

/// Recomputes the checksum byte (offset 9) of a table with a standard header.
fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// Builds all ACPI tables for `cpus` vCPUs and writes them at [`ACPI_START`]. Returns the
/// RSDP's guest address.
pub fn setup_acpi(mem: &GuestMemoryMmap, cpus: u8) -> Result<u64, AcpiError> {
    let rsdp_addr = ACPI_START;
    let mut next = align8(rsdp_addr + Rsdp::len() as u64);
    let mut blobs: Vec<(u64, Vec<u8>)> = Vec::new();

    let mut dsdt_table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt_table.append_slice(&dsdt());
    let dsdt_addr = next;
    next = align8(next + dsdt_table.len() as u64);
    blobs.push((dsdt_addr, dsdt_table.as_slice().to_vec()));

    let fadt_bytes = fadt(dsdt_addr);
    let fadt_addr = next;
    next = align8(next + fadt_bytes.len() as u64);
    blobs.push((fadt_addr, fadt_bytes));

    let madt_bytes = madt(cpus);
    let madt_addr = next;
    next = align8(next + madt_bytes.len() as u64);
    blobs.push((madt_addr, madt_bytes));

    let mcfg_bytes = pci::mcfg();
    let mcfg_addr = next;
    next = align8(next + mcfg_bytes.len() as u64);
    blobs.push((mcfg_addr, mcfg_bytes));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    let xsdt_bytes = bytes_of(&xsdt);
    let xsdt_addr = next;
    next += xsdt_bytes.len() as u64;
    blobs.push((xsdt_addr, xsdt_bytes));

    blobs.push((rsdp_addr, bytes_of(&Rsdp::new(OEM_ID, xsdt_addr))));

    let used = (next - ACPI_START) as usize;
    if used as u64 > ACPI_SIZE {
        return Err(AcpiError::TooLarge(used));
    }
    for (addr, bytes) in blobs {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut v = vec![0u8; len as usize];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn tables_checksum_and_link() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = setup_acpi(&mem, 32).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let xsdt = read_table(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        let mut sigs = Vec::new();
        for chunk in xsdt[36..].chunks(8) {
            let addr = u64::from_le_bytes(chunk.try_into().unwrap());
            let t = read_table(&mem, addr);
            assert_eq!(sum(&t), 0, "{:?}", std::str::from_utf8(&t[..4]));
            sigs.push(String::from_utf8(t[..4].to_vec()).unwrap());
            if &t[..4] == b"APIC" {
                let (mut at, mut lapics) = (44, 0);
                while at < t.len() {
                    lapics += usize::from(t[at] == 0);
                    at += usize::from(t[at + 1]);
                }
                assert_eq!(lapics, 32);
                assert_eq!(u32::from_le_bytes(t[40..44].try_into().unwrap()), 1);
            }
            if &t[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                let d = read_table(&mem, dsdt);
                assert_eq!(&d[..4], b"DSDT");
                assert_eq!(sum(&d), 0);
                assert!(d.windows(4).any(|w| w == b"_S5_"));
            }
        }
        assert_eq!(sigs, ["FACP", "APIC", "MCFG"]);
    }

    #[test]
    fn max_cpus_fit() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        setup_acpi(&mem, MAX_VCPUS as u8).unwrap();
    }
}
