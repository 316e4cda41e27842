//! Parsers for the firmware tables the VMM writes: Intel MP 1.4 and ACPI.
pub mod acpi;
pub mod mp;
