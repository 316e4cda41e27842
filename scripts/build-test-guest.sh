#!/bin/sh
# Builds the no_std test guest (two ELFs: PVH entry and 64-bit Linux-boot entry) for the
# host target as freestanding static executables. Idempotent; prints the output paths.
#
# Flags: static non-PIC code at fixed addresses; no red zone (interrupt handlers share the
# stack); no SSE: kvm_pvm's instruction emulator (used right after some exits) fails on SSE
# instructions, so the guest must be integer-only. rustc warns that the ABI wants sse2; the
# guest uses no floating point, so that ABI detail never matters here.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${TEST_GUEST_TARGET_DIR:-"$root/target/test-guest"}
triple=x86_64-unknown-linux-gnu
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
RUSTFLAGS="-C relocation-model=static -C target-cpu=x86-64 -C no-redzone=yes -C target-feature=-sse,-sse2" \
    cargo build --quiet --release --target "$triple" \
    --manifest-path "$root/guests/test-guest/Cargo.toml" \
    --target-dir "$target_dir" >"$log" 2>&1 || status=$?
grep -v -e 'target feature `sse2` must be enabled' -e 'previously accepted by the compiler' \
    -e 'issue #116344' -e '^ *|$' -e 'generated 1 warning' -e '^$' "$log" >&2 || true
test "$status" -eq 0 || exit "$status"
for bin in test-guest-pvh test-guest-elf64; do
    out="$target_dir/$triple/release/$bin"
    test -f "$out" || { echo "build-test-guest: $out missing" >&2; exit 1; }
    echo "$out"
done
