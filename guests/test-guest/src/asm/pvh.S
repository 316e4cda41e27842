# PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off, flat segments,
# ebx = guest-physical address of hvm_start_info. Loads the static identity page tables for
# the first 4 GiB (2 MiB pages), enters long mode and calls guest_entry(start_info, 1).
#
# Nothing is computed or zeroed at run time: on kvm_pvm every guest-kernel instruction is
# emulated (~1 us each), so a 2048-entry page-table loop or a 100 KiB bss clear would cost
# tens of milliseconds of boot time. The tables are assembled into .data, and .bss relies
# on the VMM handing over zeroed RAM (fresh anonymous memory, as kapsel and QEMU do).

.section .note.Xen, "a", @note
.balign 4
    .long 4                 # namesz: "Xen\0"
    .long 8                 # descsz
    .long 18                # type: XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .quad pvh_start32       # desc: physical entry point (like Linux, a pointer-sized value)

.section .text.entry, "ax"
.code32
.global _start
_start:
pvh_start32:
    cli
    cld
    lgdt gdt_ptr
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %ebx, %ebp

    mov %cr4, %eax
    or $0x620, %eax         # PAE | OSFXSR | OSXMMEXCPT
    mov %eax, %cr4
    mov $pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx   # EFER
    rdmsr
    or $0x100, %eax         # LME
    wrmsr
    mov %cr0, %eax
    and $0xfffffffb, %eax   # clear EM
    or $0x80000023, %eax    # PG | NE | MP | PE
    mov %eax, %cr0
    ljmp $0x08, $pvh_start64

.code64
pvh_start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $stack_top, %rsp
    mov %ebp, %edi
    mov $1, %esi
    call guest_entry
4:
    cli
    hlt
    jmp 4b

.section .data.pagetables, "aw"
.balign 4096
pvh_pml4:
    .quad pvh_pdpt + 3
    .fill 511, 8, 0
pvh_pdpt:
    .quad pvh_pd + 3
    .quad pvh_pd + 0x1000 + 3
    .quad pvh_pd + 0x2000 + 3
    .quad pvh_pd + 0x3000 + 3
    .fill 508, 8, 0
pvh_pd:
    .set pvh_page, 0
    .rept 2048
    .quad pvh_page + 0x83
    .set pvh_page, pvh_page + 0x200000
    .endr
