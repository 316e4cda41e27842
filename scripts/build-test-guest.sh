#!/bin/sh
# Builds the no_std test guest (two ELFs: PVH entry and 64-bit Linux-boot entry) for the
# host target as freestanding static executables. Idempotent; prints the output paths.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${TEST_GUEST_TARGET_DIR:-"$root/target/test-guest"}
# Static, non-PIC code at fixed addresses; no red zone (interrupt handlers share the stack).
# No SSE/MMX: the guest never needs floating point, and kvm_pvm (this project's dev and CI
# /dev/kvm) cannot run SSE instructions in a guest (emulation failure; QEMU fails the same
# way). rustc warns that the x86-64 ABI wants SSE2; nothing in the guest passes floats.
RUSTFLAGS="-C relocation-model=static -C target-cpu=x86-64 -C no-redzone=yes -C target-feature=-mmx,-sse,-sse2" \
    cargo build --quiet --release \
    --manifest-path "$root/guests/test-guest/Cargo.toml" \
    --target-dir "$target_dir"
for bin in test-guest-pvh test-guest-elf64; do
    echo "$target_dir/release/$bin"
done
