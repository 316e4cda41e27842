//! `cpuid`: vendor, KVM signature and kvmclock, and the vCPU count from the topology leaves.

use super::Outcome;
use crate::io::cpuid;
use crate::out::fact;

fn regs_bytes(regs: [u32; 3]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for (i, r) in regs.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    b
}

/// Logical processors per package from leaf 0xB/0x1F: ebx[15:0] of the last level.
fn topology_cpus(leaf: u32) -> Option<u32> {
    let mut cpus = None;
    for sub in 0..8 {
        let r = cpuid(leaf, sub);
        let level_type = (r.ecx >> 8) & 0xff;
        if level_type == 0 {
            break;
        }
        cpus = Some(r.ebx & 0xffff);
    }
    cpus
}

pub fn run() -> Outcome {
    let l0 = cpuid(0, 0);
    fact("vendor")
        .bytes(&regs_bytes([l0.ebx, l0.edx, l0.ecx]))
        .nl();
    fact("max_leaf").hex(u64::from(l0.eax)).nl();
    let l1 = cpuid(1, 0);
    fact("hypervisor_bit").dec(u64::from(l1.ecx >> 31)).nl();
    fact("leaf1_cpus")
        .dec(u64::from((l1.ebx >> 16) & 0xff))
        .nl();
    fact("apic_id").dec(u64::from(l1.ebx >> 24)).nl();

    let h = cpuid(0x4000_0000, 0);
    let sig = regs_bytes([h.ebx, h.ecx, h.edx]);
    let name_len = sig.iter().position(|&b| b == 0).unwrap_or(sig.len());
    fact("hypervisor").bytes(&sig[..name_len]).nl();
    fact("hypervisor_max_leaf").hex(u64::from(h.eax)).nl();
    let kvm = &sig == b"KVMKVMKVM\0\0\0";
    let features = if kvm { cpuid(0x4000_0001, 0).eax } else { 0 };
    fact("kvm_features").hex(u64::from(features)).nl();
    // KVM_FEATURE_CLOCKSOURCE (0) or KVM_FEATURE_CLOCKSOURCE2 (3).
    let kvmclock = features & ((1 << 0) | (1 << 3)) != 0;
    fact("kvmclock").dec(u64::from(kvmclock)).nl();

    let mut cpus = None;
    if l0.eax >= 0x1f {
        cpus = topology_cpus(0x1f);
        if cpus.is_some() {
            fact("topology_leaf").s("0x1f").nl();
        }
    }
    if cpus.is_none() && l0.eax >= 0xb {
        cpus = topology_cpus(0xb);
        if cpus.is_some() {
            fact("topology_leaf").s("0xb").nl();
        }
    }
    let cpus = cpus.ok_or("no topology leaf 0xB/0x1F")?;
    fact("cpuid_cpus").dec(u64::from(cpus)).nl();

    if !kvm {
        return Err("hypervisor signature is not KVMKVMKVM");
    }
    if !kvmclock {
        return Err("kvmclock feature bits missing from leaf 0x40000001");
    }
    if cpus == 0 {
        return Err("topology leaves report 0 CPUs");
    }
    Ok(())
}
