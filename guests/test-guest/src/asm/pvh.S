# PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off, flat segments,
# ebx = guest-physical address of hvm_start_info. Builds identity page tables for the first
# 4 GiB (2 MiB pages), enters long mode and calls guest_entry(start_info, 1).

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

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $pvh_pdpt, %eax
    or $3, %eax
    mov %eax, pvh_pml4
    mov $pvh_pd, %eax
    or $3, %eax
    mov $pvh_pdpt, %edi
    mov $4, %ecx
2:
    mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    dec %ecx
    jnz 2b

    mov $pvh_pd, %edi
    mov $0x83, %eax
    xor %edx, %edx
    mov $2048, %ecx
3:
    mov %eax, (%edi)
    mov %edx, 4(%edi)
    add $0x200000, %eax
    adc $0, %edx
    add $8, %edi
    dec %ecx
    jnz 3b

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

.section .bss.pagetables, "aw", @nobits
.balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 16384
