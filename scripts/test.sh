#!/usr/bin/env bash
# test.sh - THE test command: everything a fresh Debian 12 machine needs, then every test.
#
# Usage: scripts/test.sh [CARGO_TEST_ARGS...]      e.g. scripts/test.sh testbed_linux
#
#  1. host packages (scripts/setup-host.sh)             4. fmt + clippy (KAPSEL_SKIP_LINT=1 skips)
#  2. Linux guest artifacts (scripts/guest-artifacts.sh) 5. the static kapsel, once (release)
#     and the Debian root image (--debian-image; debootstrap, 2-6 min once, cached)
#  3. the hand-written test guest, if its script exists  6. cargo test --workspace (debug)
#  7. without test arguments: schemathesis against the daemon's API (scripts/schemathesis-venv.sh)
#
# The Linux end-to-end tests (crates/kapsel/tests/testbed_*.rs) boot real guests with the
# static release kapsel inside the nested test bed (scripts/testbed.sh); unit tests run in
# debug, which builds faster. Fails loudly without /dev/kvm. Expect 10-25 minutes on 2 cores
# from a warm cargo cache, plus ~30 min once if the guest kernels must be built.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T0=$SECONDS
step() { printf '\n==> [%dm%02ds] %s\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60)) "$*" >&2; }
die() { printf '\ntest.sh: FAILED: %s\n' "$*" >&2; exit 1; }
if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null; then . "$HOME/.cargo/env"; fi

step "host packages"
scripts/setup-host.sh

[ -c /dev/kvm ] || die "/dev/kvm is missing: kapsel needs KVM (modprobe kvm_intel or kvm_amd, or use a KVM-capable VM)"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || die "/dev/kvm is not read/writable for $(id -un)"

step "guest artifacts"
KAPSEL_GUEST_DIR=$(scripts/guest-artifacts.sh) || die "guest artifacts"
export KAPSEL_GUEST_DIR
echo "guest dir: $KAPSEL_GUEST_DIR" >&2
KAPSEL_DEBIAN_IMAGE=$(scripts/guest-artifacts.sh --debian-image) || die "Debian guest image"
export KAPSEL_DEBIAN_IMAGE
echo "Debian image: $KAPSEL_DEBIAN_IMAGE" >&2

if [ -x scripts/build-test-guest.sh ]; then
  step "hand-written test guest"
  scripts/build-test-guest.sh || die "scripts/build-test-guest.sh"
fi

if [ "${KAPSEL_SKIP_LINT:-0}" != 1 ]; then
  step "cargo fmt --check, clippy -D warnings"
  cargo fmt --all --check || die "cargo fmt --check (run 'cargo fmt --all')"
  cargo clippy --workspace --all-targets --quiet -- -D warnings || die "clippy"
fi

if [ "${KAPSEL_FUZZ_SECONDS:-20}" != 0 ]; then
  if ! cargo +nightly --version >/dev/null 2>&1; then
    printf '\ntest.sh: WARNING: no nightly toolchain: the fuzz targets were NOT run\n' >&2
  else
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
      step "installing cargo-fuzz (crates.io)"
      cargo install cargo-fuzz --locked --quiet || die "cargo install cargo-fuzz"
    fi
    step "fuzz targets, ${KAPSEL_FUZZ_SECONDS:-20} s each (fuzz/README.md)"
    targets=$(cd fuzz && cargo +nightly fuzz list) || die "cargo fuzz list"
    [ -n "$targets" ] || die "no fuzz targets in fuzz/Cargo.toml"
    for t in $targets; do
      (cd fuzz && cargo +nightly fuzz run -O "$t" -- -max_total_time="${KAPSEL_FUZZ_SECONDS:-20}" \
        >/tmp/kapsel-fuzz-$t.log 2>&1) || { tail -30 /tmp/kapsel-fuzz-$t.log; die "fuzz target $t"; }
    done
  fi
fi

step "static kapsel (release) for the test bed"
STATIC_TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --release --quiet --target "$STATIC_TARGET" \
  -p kapsel --target-dir "$REPO/target/static" || die "static kapsel build"
export KAPSEL_STATIC_BIN=$REPO/target/static/$STATIC_TARGET/release/kapsel
file -L "$KAPSEL_STATIC_BIN" | grep -qE 'statically linked|static-pie linked' || die "$KAPSEL_STATIC_BIN is not static"

step "cargo test --workspace $*"
KAPSEL_TESTBED_TIMINGS=$(mktemp /tmp/kapsel-testbed-timings.XXXXXX)
export KAPSEL_TESTBED_TIMINGS
trap 'rm -f "$KAPSEL_TESTBED_TIMINGS"' EXIT
rc=0
# every test binary runs even after one failed, so one CI run shows every failure
cargo test --workspace --no-fail-fast -- "$@" || rc=$?

# API fuzzing of the daemon (only in a full run: a test filter means "just these tests")
st_rc=0
if [ $# = 0 ]; then
  step "schemathesis: daemon API against docs/api/daemon.yaml (2 min at most)"
  ST=$(scripts/schemathesis-venv.sh) || die "schemathesis install (scripts/schemathesis-venv.sh)"
  cargo build --quiet -p kapsel || die "cargo build -p kapsel"
  timeout -k 10 120 python3 crates/daemon/tests/schemathesis.py --st "$ST" \
    --kapsel "${CARGO_TARGET_DIR:-$REPO/target}/debug/kapsel" || st_rc=$?
fi

if [ -s "$KAPSEL_TESTBED_TIMINGS" ]; then
  step "test-bed timings (host wall time; boots: L1 wall time per L2 boot)"
  cat "$KAPSEL_TESTBED_TIMINGS" >&2
fi
[ $rc = 0 ] || die "cargo test (exit $rc)"
[ $st_rc = 0 ] || die "schemathesis (exit $st_rc: a 5xx, a response off the schema or a daemon crash; 124: over 2 min)"
step "all tests passed"
