# Shared by both entries: GDT, boot stack and interrupt/exception stubs.
# Every stub pushes (error code, vector) so trap_common sees one frame layout, saves the
# caller-saved registers and calls guest_trap(frame).

.section .data.gdt, "aw"
.balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    # 0x08: 64-bit code
    .quad 0x00cf92000000ffff    # 0x10: flat data
gdt_end:
.balign 8
.global gdt_ptr
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

.section .bss.stack, "aw", @nobits
.balign 16
    .skip 65536
.global stack_top
stack_top:

.section .text.traps, "ax"
.code64
trap_common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov %rsp, %rdi
    push %rbp
    mov %rsp, %rbp
    and $-16, %rsp
    call guest_trap
    mov %rbp, %rsp
    pop %rbp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

trap_stub_0:
    pushq $0
    pushq $0
    jmp trap_common
trap_stub_1:
    pushq $0
    pushq $1
    jmp trap_common
trap_stub_2:
    pushq $0
    pushq $2
    jmp trap_common
trap_stub_3:
    pushq $0
    pushq $3
    jmp trap_common
trap_stub_4:
    pushq $0
    pushq $4
    jmp trap_common
trap_stub_5:
    pushq $0
    pushq $5
    jmp trap_common
trap_stub_6:
    pushq $0
    pushq $6
    jmp trap_common
trap_stub_7:
    pushq $0
    pushq $7
    jmp trap_common
trap_stub_8:
    pushq $8
    jmp trap_common
trap_stub_9:
    pushq $0
    pushq $9
    jmp trap_common
trap_stub_10:
    pushq $10
    jmp trap_common
trap_stub_11:
    pushq $11
    jmp trap_common
trap_stub_12:
    pushq $12
    jmp trap_common
trap_stub_13:
    pushq $13
    jmp trap_common
trap_stub_14:
    pushq $14
    jmp trap_common
trap_stub_15:
    pushq $0
    pushq $15
    jmp trap_common
trap_stub_16:
    pushq $0
    pushq $16
    jmp trap_common
trap_stub_17:
    pushq $17
    jmp trap_common
trap_stub_18:
    pushq $0
    pushq $18
    jmp trap_common
trap_stub_19:
    pushq $0
    pushq $19
    jmp trap_common
trap_stub_20:
    pushq $0
    pushq $20
    jmp trap_common
trap_stub_21:
    pushq $21
    jmp trap_common
trap_stub_22:
    pushq $0
    pushq $22
    jmp trap_common
trap_stub_23:
    pushq $0
    pushq $23
    jmp trap_common
trap_stub_24:
    pushq $0
    pushq $24
    jmp trap_common
trap_stub_25:
    pushq $0
    pushq $25
    jmp trap_common
trap_stub_26:
    pushq $0
    pushq $26
    jmp trap_common
trap_stub_27:
    pushq $0
    pushq $27
    jmp trap_common
trap_stub_28:
    pushq $0
    pushq $28
    jmp trap_common
trap_stub_29:
    pushq $29
    jmp trap_common
trap_stub_30:
    pushq $30
    jmp trap_common
trap_stub_31:
    pushq $0
    pushq $31
    jmp trap_common
trap_stub_32:
    pushq $0
    pushq $32
    jmp trap_common
trap_stub_33:
    pushq $0
    pushq $33
    jmp trap_common
trap_stub_34:
    pushq $0
    pushq $34
    jmp trap_common
trap_stub_35:
    pushq $0
    pushq $35
    jmp trap_common
trap_stub_36:
    pushq $0
    pushq $36
    jmp trap_common
trap_stub_37:
    pushq $0
    pushq $37
    jmp trap_common
trap_stub_38:
    pushq $0
    pushq $38
    jmp trap_common
trap_stub_39:
    pushq $0
    pushq $39
    jmp trap_common
trap_stub_40:
    pushq $0
    pushq $40
    jmp trap_common
trap_stub_41:
    pushq $0
    pushq $41
    jmp trap_common
trap_stub_42:
    pushq $0
    pushq $42
    jmp trap_common
trap_stub_43:
    pushq $0
    pushq $43
    jmp trap_common
trap_stub_44:
    pushq $0
    pushq $44
    jmp trap_common
trap_stub_45:
    pushq $0
    pushq $45
    jmp trap_common
trap_stub_46:
    pushq $0
    pushq $46
    jmp trap_common
trap_stub_47:
    pushq $0
    pushq $47
    jmp trap_common
trap_stub_48:
    pushq $0
    pushq $48
    jmp trap_common
trap_stub_49:
    pushq $0
    pushq $49
    jmp trap_common
trap_stub_50:
    pushq $0
    pushq $50
    jmp trap_common
trap_stub_51:
    pushq $0
    pushq $51
    jmp trap_common
trap_stub_52:
    pushq $0
    pushq $52
    jmp trap_common
trap_stub_53:
    pushq $0
    pushq $53
    jmp trap_common
trap_stub_54:
    pushq $0
    pushq $54
    jmp trap_common
trap_stub_55:
    pushq $0
    pushq $55
    jmp trap_common
trap_stub_56:
    pushq $0
    pushq $56
    jmp trap_common
trap_stub_57:
    pushq $0
    pushq $57
    jmp trap_common
trap_stub_58:
    pushq $0
    pushq $58
    jmp trap_common
trap_stub_59:
    pushq $0
    pushq $59
    jmp trap_common
trap_stub_60:
    pushq $0
    pushq $60
    jmp trap_common
trap_stub_61:
    pushq $0
    pushq $61
    jmp trap_common
trap_stub_62:
    pushq $0
    pushq $62
    jmp trap_common
trap_stub_63:
    pushq $0
    pushq $63
    jmp trap_common
trap_stub_64:
    pushq $0
    pushq $64
    jmp trap_common
trap_stub_65:
    pushq $0
    pushq $65
    jmp trap_common
trap_stub_66:
    pushq $0
    pushq $66
    jmp trap_common
trap_stub_67:
    pushq $0
    pushq $67
    jmp trap_common
trap_stub_68:
    pushq $0
    pushq $68
    jmp trap_common
trap_stub_69:
    pushq $0
    pushq $69
    jmp trap_common
trap_stub_70:
    pushq $0
    pushq $70
    jmp trap_common
trap_stub_71:
    pushq $0
    pushq $71
    jmp trap_common
trap_stub_72:
    pushq $0
    pushq $72
    jmp trap_common
trap_stub_73:
    pushq $0
    pushq $73
    jmp trap_common
trap_stub_74:
    pushq $0
    pushq $74
    jmp trap_common
trap_stub_75:
    pushq $0
    pushq $75
    jmp trap_common
trap_stub_76:
    pushq $0
    pushq $76
    jmp trap_common
trap_stub_77:
    pushq $0
    pushq $77
    jmp trap_common
trap_stub_78:
    pushq $0
    pushq $78
    jmp trap_common
trap_stub_79:
    pushq $0
    pushq $79
    jmp trap_common
trap_stub_255:
    pushq $0
    pushq $255
    jmp trap_common

.section .rodata.traps, "a"
.balign 8
.global trap_stub_table
trap_stub_table:
    .quad trap_stub_0
    .quad trap_stub_1
    .quad trap_stub_2
    .quad trap_stub_3
    .quad trap_stub_4
    .quad trap_stub_5
    .quad trap_stub_6
    .quad trap_stub_7
    .quad trap_stub_8
    .quad trap_stub_9
    .quad trap_stub_10
    .quad trap_stub_11
    .quad trap_stub_12
    .quad trap_stub_13
    .quad trap_stub_14
    .quad trap_stub_15
    .quad trap_stub_16
    .quad trap_stub_17
    .quad trap_stub_18
    .quad trap_stub_19
    .quad trap_stub_20
    .quad trap_stub_21
    .quad trap_stub_22
    .quad trap_stub_23
    .quad trap_stub_24
    .quad trap_stub_25
    .quad trap_stub_26
    .quad trap_stub_27
    .quad trap_stub_28
    .quad trap_stub_29
    .quad trap_stub_30
    .quad trap_stub_31
    .quad trap_stub_32
    .quad trap_stub_33
    .quad trap_stub_34
    .quad trap_stub_35
    .quad trap_stub_36
    .quad trap_stub_37
    .quad trap_stub_38
    .quad trap_stub_39
    .quad trap_stub_40
    .quad trap_stub_41
    .quad trap_stub_42
    .quad trap_stub_43
    .quad trap_stub_44
    .quad trap_stub_45
    .quad trap_stub_46
    .quad trap_stub_47
    .quad trap_stub_48
    .quad trap_stub_49
    .quad trap_stub_50
    .quad trap_stub_51
    .quad trap_stub_52
    .quad trap_stub_53
    .quad trap_stub_54
    .quad trap_stub_55
    .quad trap_stub_56
    .quad trap_stub_57
    .quad trap_stub_58
    .quad trap_stub_59
    .quad trap_stub_60
    .quad trap_stub_61
    .quad trap_stub_62
    .quad trap_stub_63
    .quad trap_stub_64
    .quad trap_stub_65
    .quad trap_stub_66
    .quad trap_stub_67
    .quad trap_stub_68
    .quad trap_stub_69
    .quad trap_stub_70
    .quad trap_stub_71
    .quad trap_stub_72
    .quad trap_stub_73
    .quad trap_stub_74
    .quad trap_stub_75
    .quad trap_stub_76
    .quad trap_stub_77
    .quad trap_stub_78
    .quad trap_stub_79
    .quad trap_stub_255
