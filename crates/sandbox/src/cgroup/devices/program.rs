//! Compiles a [`DevicePolicy`] into eBPF for `BPF_PROG_TYPE_CGROUP_DEVICE`.
//!
//! The context is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! where `access_type` holds the device type in its low 16 bits and the access bits above.
//! The program checks the exceptions from the last to the first (the last matching rule
//! decides) and returns 1 to allow, 0 to deny (the opener gets `EPERM`).

use super::{DevicePolicy, Exception};

/// One eBPF instruction, as the kernel reads it (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source register in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (class | operation | source).
const LDX_MEM_W: u8 = 0x61;
const ALU32_MOV_REG: u8 = 0xbc;
const ALU32_AND_IMM: u8 = 0x54;
const ALU32_RSH_IMM: u8 = 0x74;
const ALU64_MOV_IMM: u8 = 0xb7;
const JMP32_JEQ_IMM: u8 = 0x16;
const JMP32_JNE_IMM: u8 = 0x56;
const JMP_EXIT: u8 = 0x95;

// Registers: r1 = context; the rest are scratch the program names here.
const CTX: u8 = 1;
const ACCESS_TYPE: u8 = 2;
const DEV_TYPE: u8 = 3;
const ACCESS: u8 = 4;
const MAJOR: u8 = 5;
const MINOR: u8 = 6;
const TMP: u8 = 7;
const RET: u8 = 0;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The 32-bit immediate for a `u32` value (the kernel compares the low 32 bits in JMP32).
fn imm(v: u32) -> i32 {
    i32::from_ne_bytes(v.to_ne_bytes())
}

/// Compiles `policy`. The program length is bounded by the rule count (≤ 9 per rule).
pub fn compile(policy: &DevicePolicy) -> Vec<Insn> {
    let mut prog = vec![
        insn(LDX_MEM_W, ACCESS_TYPE, CTX, 0, 0),
        insn(ALU32_MOV_REG, DEV_TYPE, ACCESS_TYPE, 0, 0),
        insn(ALU32_AND_IMM, DEV_TYPE, 0, 0, 0xffff),
        insn(ALU32_MOV_REG, ACCESS, ACCESS_TYPE, 0, 0),
        insn(ALU32_RSH_IMM, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, CTX, 4, 0),
        insn(LDX_MEM_W, MINOR, CTX, 8, 0),
    ];
    for e in policy.exceptions.iter().rev() {
        prog.extend(exception_block(e));
    }
    prog.push(insn(
        ALU64_MOV_IMM,
        RET,
        0,
        0,
        i32::from(policy.default_allow),
    ));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

/// Checks one exception; every failed check jumps past the block's `return`.
fn exception_block(e: &Exception) -> Vec<Insn> {
    let mut block = Vec::new();
    if let Some(t) = e.dev_type {
        block.push(insn(JMP32_JNE_IMM, DEV_TYPE, 0, 0, imm(t)));
    }
    // Allow: no bit asked for outside the rule's. Deny: some bit asked for in the rule's.
    let (mask, jump_if_miss) = if e.allow {
        (!e.access & 0x7, JMP32_JNE_IMM)
    } else {
        (e.access, JMP32_JEQ_IMM)
    };
    if e.allow && mask == 0 {
        // The rule grants every access: nothing to check.
    } else {
        block.push(insn(ALU32_MOV_REG, TMP, ACCESS, 0, 0));
        block.push(insn(ALU32_AND_IMM, TMP, 0, 0, imm(mask)));
        block.push(insn(jump_if_miss, TMP, 0, 0, 0));
    }
    if let Some(m) = e.major {
        block.push(insn(JMP32_JNE_IMM, MAJOR, 0, 0, imm(m)));
    }
    if let Some(m) = e.minor {
        block.push(insn(JMP32_JNE_IMM, MINOR, 0, 0, imm(m)));
    }
    block.push(insn(ALU64_MOV_IMM, RET, 0, 0, i32::from(e.allow)));
    block.push(insn(JMP_EXIT, 0, 0, 0, 0));
    let len = block.len();
    for (i, ins) in block.iter_mut().enumerate() {
        if ins.code == JMP32_JNE_IMM || ins.code == JMP32_JEQ_IMM {
            // Jump to the instruction after this block; at most 9 instructions apart.
            ins.off = (len - i - 1) as i16;
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::super::tests::rule;
    use super::super::*;
    use super::*;

    /// Runs the subset of eBPF that `compile` emits.
    fn run(prog: &[Insn], ctx: [u32; 3]) -> u64 {
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let k = u32::from_ne_bytes(i.imm.to_ne_bytes());
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, CTX as usize);
                    r[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                ALU32_MOV_REG => r[dst] = r[src] & 0xffff_ffff,
                ALU32_AND_IMM => r[dst] = (r[dst] as u32 & k) as u64,
                ALU32_RSH_IMM => r[dst] = ((r[dst] as u32) >> k) as u64,
                ALU64_MOV_IMM => r[dst] = i.imm as i64 as u64,
                JMP32_JNE_IMM if r[dst] as u32 != k => pc += i.off as usize,
                JMP32_JEQ_IMM if r[dst] as u32 == k => pc += i.off as usize,
                JMP32_JNE_IMM | JMP32_JEQ_IMM => {}
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn program_agrees_with_the_policy_everywhere() {
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(3), "rwm"),
            rule(true, 'c', Some(136), None, "rw"),
            rule(true, 'b', Some(8), Some(0), "r"),
            rule(false, 'c', Some(136), Some(7), "w"),
            rule(true, 'c', None, Some(9), "m"),
            rule(true, 'c', Some(0xffff_fff0), Some(1), "rwm"),
        ];
        for n in 0..=rules.len() {
            let policy = DevicePolicy::from_rules(&rules[..n]).unwrap();
            let prog = compile(&policy);
            for t in [DEV_BLOCK, DEV_CHAR] {
                for major in [0, 1, 8, 136, 0xffff_fff0] {
                    for minor in [0, 1, 3, 7, 9] {
                        for access in 1..8 {
                            let want = policy.allows(t, major, minor, access);
                            let got = run(&prog, [(access << 16) | t, major, minor]);
                            assert_eq!(got == 1, want, "rules {n} {t} {major}:{minor} {access}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn jumps_stay_inside_the_program() {
        let policy = DevicePolicy::from_rules(&[
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(5), Some(1), "rw"),
        ])
        .unwrap();
        let prog = compile(&policy);
        for (pc, i) in prog.iter().enumerate() {
            if i.code == JMP32_JNE_IMM || i.code == JMP32_JEQ_IMM {
                assert!(pc + 1 + (i.off as usize) < prog.len());
            }
        }
        assert_eq!(prog.last().map(|i| i.code), Some(JMP_EXIT));
    }
}
