#!/usr/bin/env bash
# Make this machine able to build and run the compose stack with podman (docs/containers.md):
#   1. Debian packages podman, runc, debootstrap and docker-compose (v1, which talks to podman's
#      Docker-compatible API; scripts/container/compose-test.sh starts that service);
#   2. /etc/containers/containers.conf from scripts/container/containers.conf, when there is none;
#   3. the base image localhost/splitedge-base:bookworm, made with debootstrap (no registry needed).
# Idempotent: what is in place is left alone, so a second run takes a second. Needs root for 1 and 2
# (apt-get); skips them when all is installed already.
#   env: BASE_IMAGE (default localhost/splitedge-base:bookworm), DEBIAN_MIRROR (default
#        http://deb.debian.org/debian)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${BASE_IMAGE:-localhost/splitedge-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fail() { echo "container-setup: error: $*" >&2; exit 1; }
step() { echo "container-setup: $*"; }

# 1. Packages.
missing=()
for cmd in podman:podman runc:runc debootstrap:debootstrap docker-compose:docker-compose; do
    command -v "${cmd%%:*}" > /dev/null || missing+=("${cmd##*:}")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || fail "missing ${missing[*]}; run this as root (it installs them with apt-get)"
    command -v apt-get > /dev/null || fail "missing ${missing[*]} and no apt-get to install them (install them by hand)"
    step "installing ${missing[*]} (apt-get)"
    start=$SECONDS
    log=$(mktemp)
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            podman runc debootstrap docker-compose uidmap slirp4netns fuse-overlayfs \
            containernetworking-plugins netavark aardvark-dns catatonit; } > "$log" 2>&1; then
        tail -5 "$log" >&2
        fail "apt-get install ${missing[*]} failed (the lines above; full log $log)"
    fi
    rm -f "$log"
    step "installed in $((SECONDS - start)) s"
fi

# 2. podman's settings: runc (crun fails on hybrid cgroups), cgroupfs, file events, ulimits permitted here.
conf=/etc/containers/containers.conf
if [[ ! -e $conf ]]; then
    [[ -w /etc/containers ]] || fail "$conf is missing and /etc/containers is not writable (run as root)"
    cp "$here/containers.conf" "$conf"
    step "wrote $conf"
elif ! grep -q '^runtime *= *"runc"' "$conf"; then
    echo "container-setup: warning: $conf exists and does not set runtime = \"runc\"; left alone" \
         "(compare with $here/containers.conf if containers fail to start)" >&2
fi
podman info > /dev/null 2>&1 || fail "podman does not work here: $(podman info 2>&1 | tail -1)"

# 3. The base image: Debian bookworm with python3 (3.11) and its venv module, from the Debian mirror.
if podman image exists "$base"; then
    step "base image $base already there"
else
    start=$SECONDS
    root=$(mktemp -d /tmp/splitedge-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    step "making $base with debootstrap from $mirror (about a minute)"
    log=$(mktemp)
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$mirror" > "$log" 2>&1 \
        || { tail -5 "$log" >&2; fail "debootstrap bookworm from $mirror failed (the lines above; full log $log)"; }
    rm -f "$log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --quiet - "$base" > /dev/null || fail "podman import of $root as $base failed"
    step "base image $base made in $((SECONDS - start)) s ($(podman image inspect --format '{{.Size}}' "$base" | numfmt --to=si)B)"
fi
