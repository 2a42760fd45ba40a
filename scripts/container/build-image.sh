#!/usr/bin/env bash
# `make image`: build the splitedge image here with podman, offline (docs/containers.md):
#   1. scripts/container/setup.sh: podman, runc, debootstrap, docker-compose; containers.conf; the
#      base image localhost/splitedge-base:bookworm from debootstrap (no registry is needed);
#   2. scripts/container/fetch-wheels.sh: every wheel the build installs, on the host, into wheels/;
#   3. podman build --network=none: the build provably fetches nothing.
#   env: IMAGE (default localhost/splitedge:latest), BASE_IMAGE, TORCH_PINS, EXTRAS,
#        BUILD_LOG (default /tmp/splitedge-build.log)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=scripts/container
base=${BASE_IMAGE:-localhost/splitedge-base:bookworm}
image=${IMAGE:-localhost/splitedge:latest}
build_log=${BUILD_LOG:-/tmp/splitedge-build.log}
fail() { echo "build-image: error: $*" >&2; exit 1; }

BASE_IMAGE=$base "$here/setup.sh" || fail "machine setup failed ($here/setup.sh, above)"
"$here/fetch-wheels.sh" || fail "fetching wheels failed ($here/fetch-wheels.sh, above)"
args=(--network=none --build-arg BASE="$base" -t "$image")
[[ -n ${TORCH_PINS:-} ]] && args+=(--build-arg TORCH_PINS="$TORCH_PINS")
[[ -n ${EXTRAS:-} ]] && args+=(--build-arg EXTRAS="$EXTRAS")
start=$SECONDS
stamp() { while IFS= read -r line; do printf '[%4d s] %s\n' $((SECONDS - start)) "$line"; done; }
podman build "${args[@]}" . 2>&1 | stamp > "$build_log"
[[ ${PIPESTATUS[0]} == 0 ]] \
    || { tail -15 "$build_log" >&2; fail "podman build failed (the lines above; full log $build_log)"; }
podman image prune -f > /dev/null 2>&1 || true  # layers no tagged image uses any more (earlier builds')
echo "build-image: $image built in $((SECONDS - start)) s," \
     "$(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B (log $build_log, each line timed)"
# The slowest steps, from the timed STEP lines (a step ends where the next begins).
awk -v end=$((SECONDS - start)) '
    /^\[ *[0-9]+ s\] STEP / { t = $2 + 0; sub(/^\[[^]]*\] /, ""); if (name != "") d[name] = t - t0; name = substr($0, 1, 90); t0 = t }
    END { if (name != "") d[name] = end - t0; for (n in d) if (d[n] >= 5) printf "build-image:   %4d s  %s\n", d[n], n }
' "$build_log" | sort -k2,2nr | head -5
