#!/bin/sh
# pip install inside the image build (Dockerfile). Offline when the build context's wheels/ holds
# wheels (scripts/container/fetch-wheels.sh puts them there; the Dockerfile bind-mounts the folder at
# /wheels, so they never land in a layer): --no-index --find-links /wheels. Otherwise from the
# index given as $1 ("-": pip's default, PyPI).
# Usage: pip-install.sh INDEX_URL|- PIP_INSTALL_ARGS...
set -eu
index=$1
shift
if ls /wheels/*.whl >/dev/null 2>&1; then
    echo "pip-install: offline, from the wheels in the build context ($(ls /wheels/*.whl | wc -l) wheels)"
    set -- --no-index --find-links /wheels "$@"
elif [ "$index" != "-" ]; then
    echo "pip-install: from $index"
    set -- --index-url "$index" "$@"
else
    echo "pip-install: from PyPI"
fi
exec pip install --no-cache-dir --disable-pip-version-check "$@"
