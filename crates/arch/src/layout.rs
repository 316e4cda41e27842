//! The guest-physical memory layout. Every fixed address kapsel puts something at lives here.

/// Global descriptor table for the boot vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty interrupt descriptor table (the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, followed by the module list and the memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after `hvm_start_info` (56 bytes).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT and four page directories (4 GiB of 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// How much the boot page tables map.
pub const IDENTITY_MAPPED_SIZE: u64 = 4 << 30;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line (bytes, without the NUL) accepted when the kernel does not say.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: RAM below it, reserved from here to 640 KiB.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first).
pub const ACPI_START: u64 = 0xe0000;
/// Size of the ACPI area.
pub const ACPI_SIZE: u64 = 0x10000;
/// Intel MP table (floating pointer first).
pub const MPTABLE_START: u64 = 0xf0000;
/// End of the first megabyte; the kernel loads above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit PCI/MMIO hole: RAM below 4 GiB ends here at the latest.
pub const MEM_32BIT_GAP_START: u64 = 3 << 30;
/// First address above 4 GiB; RAM that does not fit below the hole continues here.
pub const RAM_64BIT_START: u64 = 4 << 30;
/// PCI: 32-bit memory BARs are placed in [`PCI_MMIO_START`, +[`PCI_MMIO_SIZE`]) (announced
/// as the host bridge's memory window in the DSDT).
pub const PCI_MMIO_START: u64 = 0xc000_0000;
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// PCI ECAM (MMCONFIG) for bus 0 (1 MiB: 32 devices × 8 functions × 4 KiB), announced in
/// the MCFG table and reserved as a motherboard resource.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// Smallest guest memory kapsel accepts.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Largest number of vCPUs: APIC IDs must fit in 8 bits for the xAPIC MADT/MP entries.
pub const MAX_VCPUS: usize = 254;
/// I/O port of the hardware-reduced ACPI sleep control register (status at +1, reset at +2).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Value written to the ACPI reset register to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 1;
/// SLP_TYP of the S5 (soft-off) state announced in the DSDT.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
