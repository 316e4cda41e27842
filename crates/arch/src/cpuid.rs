//! CPUID as the guest sees it: KVM's supported set, filtered per vCPU so that APIC IDs,
//! topology leaves and the hypervisor bit agree with the VM's shape.
//!
//! Topology: every vCPU is one core of one socket, one thread per core.

use hv::types::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;

/// KVM paravirtual feature: port 0x80 writes are not needed as I/O delays.
const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;

/// Topology level types of leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Number of APIC-ID bits needed to number `n` items.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The CPU vendor, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// Reads the vendor string out of a CPUID list.
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    s[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    s[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &s {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Adjusts `cpuid` (a copy of KVM's supported list) for vCPU `cpu_index` of `cpu_count`.
/// `tsc_deadline` says whether the in-kernel LAPIC supports the TSC-deadline timer.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8, tsc_deadline: bool) {
    let apic_id = u32::from(cpu_index);
    let count = u32::from(cpu_count.max(1));
    let core_bits = id_bits(count);
    ensure_topology_leaf(cpuid);
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, apic_id, count, core_bits, tsc_deadline);
    }
}

/// Makes leaf 0xB present with its SMT, core and terminating subleaves (KVM on some hosts,
/// AMD ones in particular, reports only subleaf 0 or none), so every guest finds the
/// topology there. The values are filled in by [`filter_entry`].
fn ensure_topology_leaf(cpuid: &mut CpuId) {
    let max_leaf = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    if max_leaf < LEAF_EXT_TOPOLOGY {
        return;
    }
    let kept: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_EXT_TOPOLOGY)
        .copied()
        .collect();
    let mut entries = kept;
    for index in 0..3 {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_EXT_TOPOLOGY,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        });
    }
    if let Ok(rebuilt) = CpuId::from_entries(&entries) {
        *cpuid = rebuilt;
    }
}

fn filter_entry(
    e: &mut kvm_cpuid_entry2,
    apic_id: u32,
    count: u32,
    core_bits: u32,
    tsc_deadline: bool,
) {
    match e.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size (kept).
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
            e.ecx |= ECX_HYPERVISOR;
            if tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            } else {
                e.ecx &= !ECX_TSC_DEADLINE;
            }
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
            // [31:26] cores per package - 1; [25:14] threads sharing this cache - 1.
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | ((count - 1).min(0x3f) << 26);
        }
        LEAF_PMU => {
            // No virtual PMU: a guest must not program counters kapsel does not model.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = count;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_KVM_FEATURES => {
            // Keeps Linux from writing port 0x80 as an I/O delay: that port is the boot timer.
            e.eax |= KVM_FEATURE_NOP_IO_DELAY;
        }
        LEAF_AMD_EXT_FEATURES => {
            if count > 1 {
                e.ecx |= AMD_ECX_CMP_LEGACY;
            } else {
                e.ecx &= !AMD_ECX_CMP_LEGACY;
            }
        }
        LEAF_AMD_SIZE_IDS => {
            // ECX: [15:12] APIC-ID bits for cores, [7:0] number of cores - 1.
            e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | ((count - 1) & 0xff);
        }
        LEAF_AMD_EXT_APIC_ID => {
            e.eax = apic_id;
            // EBX: [15:8] threads per core - 1 (0), [7:0] core id.
            e.ebx = apic_id & 0xff;
            // ECX: [10:8] nodes per processor - 1 (0), [7:0] node id (0).
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0x1f,
                ebx: u32::from_le_bytes(*b"Auth"),
                edx: u32::from_le_bytes(*b"enti"),
                ecx: u32::from_le_bytes(*b"cAMD"),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            leaf(0xb, 0),
            leaf(0xa, 0),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 32, 33].map(id_bits), [0, 1, 2, 2, 3, 5, 6]);
    }

    #[test]
    fn apic_id_and_count_land_in_every_topology_leaf() {
        let mut c = sample();
        filter_cpuid(&mut c, 3, 4, true);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        let end = find(&c, 0xb, 2);
        assert_eq!((smt.ebx, smt.edx, (smt.ecx >> 8) & 0xff), (1, 3, 1));
        assert_eq!((core.eax, core.ebx, (core.ecx >> 8) & 0xff), (2, 4, 2));
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff), (0, 0));
        assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, 3);
        assert_eq!(find(&c, 0x8000_001e, 0).eax, 3);
        assert_eq!(find(&c, 0xa, 0).eax, 0);
    }

    #[test]
    fn topology_subleaves_are_created() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 2, false);
        let n = c.as_slice().iter().filter(|e| e.function == 0xb).count();
        assert_eq!(n, 3);
        assert_eq!(find(&c, 0xb, 1).flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 1, false);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(vendor(&c), Vendor::Amd);
    }
}
