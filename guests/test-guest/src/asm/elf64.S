# 64-bit Linux boot protocol entry (ELF without the PVH note): long mode with the VMM's
# identity page tables, CS=0x08, rsi = boot_params ("zero page"). Enables SSE, loads our own
# GDT and stack (the VMM's stack at 0x8ff0 is tiny) and calls guest_entry(boot_params, 2).
# .bss is not cleared: the VMM hands over zeroed RAM (see pvh.S for why that matters).

.section .text.entry, "ax"
.code64
.global _start
_start:
    cli
    cld
    mov %rsi, %r12

    mov %cr4, %rax
    or $0x600, %rax         # OSFXSR | OSXMMEXCPT
    mov %rax, %cr4
    mov %cr0, %rax
    and $0xfffffffffffffffb, %rax   # clear EM
    or $0x22, %rax          # NE | MP
    mov %rax, %cr0

    lgdt gdt_ptr
    mov $stack_top, %rsp
    pushq $0x08
    lea 4f(%rip), %rax
    push %rax
    lretq
4:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov %r12, %rdi
    mov $2, %esi
    call guest_entry
5:
    cli
    hlt
    jmp 5b
