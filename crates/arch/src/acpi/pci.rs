//! The PCI pieces of the ACPI tables: the host bridge `\_SB_.PCI0` with its resource windows,
//! the motherboard device that reserves the ECAM range (Linux only trusts MMCONFIG that is
//! reserved there), and the MCFG table that locates ECAM.

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::mcfg::MCFG;
use acpi_tables::Aml;

use super::{bytes_of, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START};

/// `\_SB_.PCI0`: a PCI Express root bridge (conventional PCI compatible) for bus 0, with the
/// configuration ports, the legacy I/O ranges and the 32-bit BAR window.
pub(super) fn host_bridge() -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let zero: u8 = 0;
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0x0000, 0x0cf7, None);
    let io_high = AddressSpace::<u16>::new_io(0x0d00, 0xffff, None);
    let mmio = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_START + PCI_MMIO_SIZE - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_ports, &io_low, &io_high, &mmio]);
    let names = [
        aml::Name::new(aml::Path::new("_HID"), &hid),
        aml::Name::new(aml::Path::new("_CID"), &cid),
        aml::Name::new(aml::Path::new("_ADR"), &zero),
        aml::Name::new(aml::Path::new("_SEG"), &zero),
        aml::Name::new(aml::Path::new("_UID"), &zero),
        aml::Name::new(aml::Path::new("_BBN"), &zero),
        aml::Name::new(aml::Path::new("_CRS"), &crs),
    ];
    let children: Vec<&dyn Aml> = names.iter().map(|n| n as &dyn Aml).collect();
    bytes_of(&aml::Device::new(aml::Path::new("PCI0"), children))
}

/// `\_SB_.MBRD` (PNP0C02): reserves the ECAM range.
pub(super) fn motherboard_resources() -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0C02");
    let zero: u8 = 0;
    let ecam = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let crs = aml::ResourceTemplate::new(vec![&ecam]);
    let hid_name = aml::Name::new(aml::Path::new("_HID"), &hid);
    let uid_name = aml::Name::new(aml::Path::new("_UID"), &zero);
    let crs_name = aml::Name::new(aml::Path::new("_CRS"), &crs);
    bytes_of(&aml::Device::new(
        aml::Path::new("MBRD"),
        vec![&hid_name, &uid_name, &crs_name],
    ))
}

/// The MCFG table: ECAM of segment 0, bus 0 only.
pub(super) fn mcfg() -> Vec<u8> {
    let mut t = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.add_ecam(PCI_ECAM_START, 0, 0, 0);
    bytes_of(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcfg_points_at_ecam_for_bus_zero() {
        let t = mcfg();
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(t.len(), 44 + 16);
        assert_eq!(
            u64::from_le_bytes(t[44..52].try_into().unwrap()),
            PCI_ECAM_START
        );
        assert_eq!((t[54], t[55]), (0, 0));
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn host_bridge_names_its_ids_and_window() {
        let d = host_bridge();
        assert!(d.windows(4).any(|w| w == b"PCI0"));
        assert!(d.windows(4).any(|w| w == b"_CRS"));
        let start = (PCI_MMIO_START as u32).to_le_bytes();
        assert!(d.windows(4).any(|w| w == start));
    }
}
