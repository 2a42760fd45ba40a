#!/usr/bin/env bash
# `make compose-test`: build the image and run docker-compose.yml for real with podman, then check that
# the device's JSONL holds results the edge server computed, reached through the link emulator.
#
#   1-3. scripts/container/build-image.sh (`make image`): podman and the rest, containers.conf, the
#      base image from debootstrap, the wheels fetched on the host into wheels/ (a cache), then
#      podman build --network=none (so the build provably fetches nothing);
#   4. `podman system service` on a private socket, and docker-compose (v1) against it: up, wait for
#      the device to finish, check, down. podman without systemd does not schedule health checks,
#      so this script runs them (`podman healthcheck run`) while the stack comes up.
# Passes when every service ran as a container (certs and device exited 0, edge and emulator were
# up), every frame got its line, and at least MIN_REMOTE frames were served by the edge (mode split
# or offload, no fallback, no error), with the edge's metrics counting them. Exit 1 with one line
# that says what failed and where its log is; the compose logs are kept in $WORK.
#   env: MODE (the device's; default split: auto may rightly keep every frame local on a loaded machine,
#        which would prove nothing of the path through the emulator), LOOPS (passes over samples/coco's
#        6 images; default 4: a device that cannot connect at first, as it once happened for ~20 s
#        on a loaded machine, still has frames to split after), MIN_REMOTE (default 3),
#        TIMEOUT_S (the stack's whole run; default 600), WORK (logs and the JSONL; default a new
#        /tmp/splitedge-compose-test.XXXXXX), BASE_IMAGE, IMAGE (default localhost/splitedge:latest),
#        TORCH_PINS, EXTRAS (build-image.sh's)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=scripts/container
loops=${LOOPS:-4}
mode=${MODE:-split}
min_remote=${MIN_REMOTE:-3}
timeout_s=${TIMEOUT_S:-600}
base=${BASE_IMAGE:-localhost/splitedge-base:bookworm}
image=${IMAGE:-localhost/splitedge:latest}
project=splitedge-compose-test
work=${WORK:-$(mktemp -d /tmp/splitedge-compose-test.XXXXXX)}
mkdir -p "$work/results"
t0=$SECONDS
log() { echo "compose-test: [$((SECONDS - t0)) s] $*"; }
fail() { echo "compose-test: error: $*" >&2; exit 1; }

# 1-3. The machine, the wheels and the image (scripts/container/build-image.sh).
BUILD_LOG="$work/build.log" IMAGE=$image BASE_IMAGE=$base "$here/build-image.sh" \
    || fail "building the image failed ($here/build-image.sh, above)"
log "image ready"

# 4. The stack.
sock="$work/podman.sock"
podman system service --time=0 "unix://$sock" > "$work/podman-service.log" 2>&1 &
service_pid=$!
export DOCKER_HOST="unix://$sock" COMPOSE_PROJECT_NAME=$project
export IMAGE=$image BASE=$base LOOPS=$loops MODE=$mode RESULTS="$work/results"
compose() { docker-compose --ansi never "$@"; }
healthcheck_pid=
cleanup() {
    [[ -n $healthcheck_pid ]] && kill "$healthcheck_pid" 2> /dev/null || true
    if [[ -S $sock ]]; then
        compose logs --no-color > "$work/compose.log" 2>&1 || true
        compose down -v --remove-orphans > "$work/down.log" 2>&1 \
            || echo "compose-test: warning: docker-compose down failed ($work/down.log)" >&2
    fi
    kill "$service_pid" 2> /dev/null || true
    wait "$service_pid" 2> /dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.2; done
[[ -S $sock ]] || fail "podman system service did not open $sock ($work/podman-service.log)"
compose down -v --remove-orphans > /dev/null 2>&1 || true  # what an interrupted run left behind

# podman schedules health checks with systemd timers; without systemd, run them here.
(
    while sleep 3; do
        for c in $(podman ps --filter "label=com.docker.compose.project=$project" --format '{{.Names}}'); do
            [[ $(podman inspect --format '{{.State.Health.Status}}' "$c" 2> /dev/null) == starting ]] \
                && podman healthcheck run "$c" > /dev/null 2>&1 || true
        done
    done
) &
healthcheck_pid=$!

up_start=$SECONDS
timeout "$timeout_s" docker-compose --ansi never up -d --no-build > "$work/up.log" 2>&1 \
    || { tail -5 "$work/up.log" >&2; cleanup; trap - EXIT
         fail "docker-compose up failed or timed out after ${timeout_s}s (the lines above; logs in $work: up.log, compose.log)"; }
log "stack up in $((SECONDS - up_start)) s (certs done, edge and emulator healthy, device started)"

device=$(compose ps -q device)
[[ -n $device ]] || fail "no device container (logs in $work)"
left=$((timeout_s - (SECONDS - up_start)))
run_start=$SECONDS
code=$(timeout "$left" podman wait "$device") || fail "the device did not finish within ${timeout_s}s of the stack's start (logs in $work)"
log "device finished in $((SECONDS - run_start)) s, exit $code"

# What ran: one container per service, and how each ended.
states=$(podman ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r podman inspect --format \
    '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} exit={{.State.ExitCode}} health={{.State.Health.Status}}' | sort)
echo "$states" | sed 's/^/compose-test:   /'
metrics=$(podman exec "$(compose ps -q edge)" python -c \
    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=5).read().decode())" \
    2> "$work/metrics.err") || fail "cannot read the edge's metrics ($work/metrics.err)"
echo "$metrics" > "$work/edge-metrics.txt"
emulator_log=$(podman logs "$(compose ps -q emulator)" 2>&1)
device_log=$(podman logs "$(compose ps -q device)" 2>&1)
# The two hops the device's frames take, by name, as the device saw them (for a failure's diagnosis).
hop1=$(podman run --rm --network "${project}_default" "$image" python scripts/container/healthcheck.py tcp emulator:50052 2>&1 \
       && echo ok) || true
hop2=$(podman exec "$(compose ps -q emulator)" python scripts/container/healthcheck.py tcp edge:50051 2>&1 && echo ok) || true
log "network after the run: device->emulator:50052 ${hop1:-?}; emulator->edge:50051 ${hop2:-?}"
delay_ms=$(podman inspect --format '{{json .Config.Cmd}}' "$(compose ps -q emulator)" \
    | python3 -c "import json, sys; c = json.load(sys.stdin); print(c[c.index('--delay-ms') + 1] if '--delay-ms' in c else 0)")
cleanup
trap - EXIT

for service in certs edge emulator device; do
    grep -q "^$service " <<< "$states" || fail "service $service never ran as a container (logs in $work)"
done
grep -q "^certs exited exit=0 " <<< "$states" || fail "certs did not exit 0 ($work/compose.log)"
[[ $code == 0 ]] || fail "the device exited $code ($work/compose.log)"
for service in edge emulator; do
    grep -q "^$service running .* health=healthy" <<< "$states" || fail "$service was not running when the device finished ($work/compose.log)"
done
grep -q "emulating on" <<< "$emulator_log" || fail "the emulator never said it was listening ($work/compose.log)"
jsonl="$work/results/$mode.jsonl"
[[ -s $jsonl ]] || fail "the device wrote no $jsonl ($work/compose.log)"
if ! python3 - "$jsonl" "$((6 * loops))" "$min_remote" "$work/edge-metrics.txt" "$delay_ms" <<'EOF' 
import json, re, sys
path, frames, min_remote, metrics, delay_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
records = [json.loads(line) for line in open(path) if line.strip()]
modes = {}
for r in records:
    modes[r.get("mode")] = modes.get(r.get("mode"), 0) + 1
remote = [r for r in records if r.get("mode") in ("split", "offload") and not r.get("fallback") and not r.get("error")]
network = sorted(r["network_ms"] for r in remote if r.get("network_ms") is not None)
median_net = network[len(network) // 2] if network else 0.0
counted = sum(float(v) for v in re.findall(r'^splitedge_frames_total\{[^}]*code="OK"[^}]*\} ([0-9.e+]+)$', open(metrics).read(), re.M))
print(f"compose-test:   {len(records)} lines, modes {modes}, {len(remote)} served by the edge; "
      f"median network {median_net:.0f} ms; edge metrics count {counted:.0f} frames")
problems = []
if len(records) != frames:
    problems.append(f"{len(records)} lines for {frames} frames")
if len(remote) < min_remote:
    problems.append(f"only {len(remote)} frames served by the edge through the emulator (want >= {min_remote})")
if remote and median_net < 2 * delay_ms:  # the emulator adds its delay each way; the bare network ~0
    problems.append(f"median network time {median_net:.1f} ms < 2 x {delay_ms:g} ms: not through the emulator")
if counted < len(remote):
    problems.append(f"the edge's metrics count {counted:.0f} frames, fewer than the {len(remote)} the device got back")
for p in problems:
    print(f"compose-test:   {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
then
    unavailable=$(grep -o "edge unavailable ([^)]*)" <<< "$device_log" | head -1)
    # What the emulator saw of each connection (opened, upstream reached, bytes each way): which hop held the device.
    grep " connection " <<< "$emulator_log" | tail -8 | sed 's/^/compose-test:   emulator: /' >&2 || true
    fail "the results do not pass (above; $jsonl)${unavailable:+; the device said: $unavailable}"
fi
log "passed (logs and $jsonl in $work)"
