#!/usr/bin/env bash
# Builds container root filesystems into the kapsel cache, idempotently.
#
#   scripts/container-rootfs.sh busybox   # from Debian's busybox-static (seconds)
#   scripts/container-rootfs.sh debian    # Debian bookworm minbase via debootstrap (minutes, cached)
#
# Prints the path of the finished root filesystem on stdout. A finished tree is marked with
# a `.kapsel-rootfs-done` stamp; a half-built one is removed and rebuilt.
set -euo pipefail

kind="${1:-busybox}"
cache="${KAPSEL_CACHE:-$HOME/.cache/kapsel}/rootfs"
mkdir -p "$cache"

need_pkg() {
    local bin="$1" pkg="$2"
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "$bin" ]; then
        echo "installing $pkg" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >&2
    fi
}

build_busybox() {
    local dest="$1"
    need_pkg /bin/busybox busybox-static
    file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
    if ! file_is_static /bin/busybox; then
        echo "/bin/busybox is not static; install busybox-static" >&2
        exit 1
    fi
    mkdir -p "$dest"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var/www,run}
    chmod 1777 "$dest/tmp"
    cp /bin/busybox "$dest/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] && continue
        ln -sf busybox "$dest/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dest/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$dest/etc/group"
    echo 'kapsel busybox rootfs' >"$dest/etc/issue"
    echo '<h1>hello from a kapsel container</h1>' >"$dest/var/www/index.html"
}

build_debian() {
    local dest="$1"
    need_pkg debootstrap debootstrap
    local mirror="${KAPSEL_DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ]; then
        # Reuse the host's apt mirror so this works wherever apt works.
        mirror=$(grep -rhoE '^(deb|URIs:)\s*\S+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | awk '{print $2}' | grep -m1 debian || true)
        mirror="${mirror:-http://deb.debian.org/debian}"
    fi
    debootstrap --variant=minbase bookworm "$dest" "$mirror" >&2
    echo 'kapsel debian rootfs' >"$dest/etc/issue.kapsel"
}

case "$kind" in
busybox | debian) ;;
*)
    echo "usage: $0 busybox|debian" >&2
    exit 2
    ;;
esac

dest="$cache/$kind"
if [ -f "$dest/.kapsel-rootfs-done" ]; then
    echo "$dest"
    exit 0
fi
rm -rf "$dest" "$dest.tmp"
mkdir -p "$dest.tmp"
"build_$kind" "$dest.tmp"
touch "$dest.tmp/.kapsel-rootfs-done"
mv "$dest.tmp" "$dest"
echo "$dest"
