#!/usr/bin/env bash
# schemathesis-venv.sh - schemathesis (PyPI, pinned) in a venv of kapsel's cache; prints the
# path of its `st`. Idempotent: quiet and quick when the pinned version is already there.
#
# Used by scripts/test.sh for the daemon's API fuzzing (crates/daemon/tests/schemathesis.py).
# KAPSEL_CACHE moves the cache (default ~/.cache/kapsel).
set -euo pipefail

VERSION=4.32.5
VENV=${KAPSEL_CACHE:-$HOME/.cache/kapsel}/schemathesis-$VERSION
die() { echo "schemathesis-venv.sh: $*" >&2; exit 1; }

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
  python3 -c 'import venv, ensurepip' 2>/dev/null || die "needs python3-venv (scripts/setup-host.sh)"
  # an interrupted earlier attempt leaves a venv without the pinned st: pip completes it
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2 || die "python3 -m venv $VENV failed"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2 \
    || die "pip install schemathesis==$VERSION failed"
  "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION" || die "$VENV/bin/st does not run"
fi
echo "$VENV/bin/st"
