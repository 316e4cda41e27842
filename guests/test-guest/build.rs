//! Links both guest binaries as freestanding static ELFs loaded at 1 MiB physical.
//!
//! One linker-script template, two scripts: the PVH binary gets a `PT_NOTE` segment for its
//! `XEN_ELFNOTE_PHYS32_ENTRY` note, the 64-bit binary gets none (so loaders take e_entry).

use std::env;
use std::fs;
use std::path::PathBuf;

/// Guest-physical (and identity-mapped virtual) load address.
const LOAD_ADDR: &str = "0x100000";

fn script(with_note: bool) -> String {
    let (phdr_note, note_section) = if with_note {
        (
            "    note PT_NOTE FLAGS(4);\n",
            "    .note.Xen : ALIGN(4) { KEEP(*(.note.Xen)) } :text :note\n",
        )
    } else {
        ("", "")
    };
    format!(
        "ENTRY(_start)\n\
         PHDRS\n{{\n    text PT_LOAD FLAGS(7);\n{phdr_note}}}\n\
         SECTIONS\n{{\n\
         \x20   . = {LOAD_ADDR};\n\
         \x20   .text : {{ KEEP(*(.text.entry)) *(.text .text.*) }} :text\n\
         \x20   .rodata : ALIGN(16) {{ *(.rodata .rodata.*) }} :text\n\
         {note_section}\
         \x20   .data : ALIGN(16) {{ *(.data .data.*) *(.got .got.*) }} :text\n\
         \x20   .bss (NOLOAD) : ALIGN(4096) {{ __bss_start = .; *(.bss .bss.*) *(COMMON) . = ALIGN(16); __bss_end = .; }} :text\n\
         \x20   /DISCARD/ : {{ *(.eh_frame*) *(.comment) *(.note.GNU-stack) *(.note.gnu.*) }}\n\
         }}\n"
    )
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (bin, with_note) in [("test-guest-pvh", true), ("test-guest-elf64", false)] {
        let path = out.join(format!("{bin}.ld"));
        fs::write(&path, script(with_note)).expect("write linker script");
        for arg in [
            format!("-T{}", path.display()),
            "-nostartfiles".into(),
            "-nostdlib".into(),
            "-static".into(),
            "-no-pie".into(),
            "-Wl,--build-id=none".into(),
            "-Wl,-z,noexecstack".into(),
            "-Wl,-z,max-page-size=4096".into(),
        ] {
            println!("cargo:rustc-link-arg-bin={bin}={arg}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
