# Two commands on a fresh machine: `make demo` (build the SABER clip table from a generated sample set)
# and `make test`. Both create .venv and install what they need, system packages included.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
LOCK := requirements.lock
PIP_VERSION := 26.3
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)
# pip-tools in a venv of its own (not the project's): it resolves pyproject.toml's ranges into the lock.
PIPTOOLS := .cache/piptools/bin
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(PIPTOOLS)/pip-compile --quiet --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links --output-file $(LOCK) pyproject.toml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_CLIPS ?= .cache/demo_clips
DEMO_OUT ?= outputs/demo

.PHONY: demo demo-sft demo-lifecycle test test-latest lint lock lock-upgrade system-deps browser-deps install clean

system-deps:
	@if ! command -v ffmpeg >/dev/null || ! command -v espeak-ng >/dev/null || ! python3 -c "import ctypes.util as u, sys; sys.exit(not u.find_library('chromaprint'))"; then \
		echo "installing ffmpeg, espeak-ng and libchromaprint1 (near-duplicate audio fingerprints) with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng libchromaprint1; \
	fi

# The data browser's page test drives a real headless chromium (tests/jobs/test_browse.py); only `make test` needs it.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		echo "installing chromium and chromium-driver (the data browser's page test) with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# Every package at the exact version of the committed lock (requirements.lock, made by `make lock`). Torch and
# torchvision first, as a matching pair (the Qwen video processors need torchvision); then the rest without build
# isolation, so DeepSpeed's setup sees that torch instead of fetching another; then the project itself, no deps.
$(STAMP): pyproject.toml $(LOCK)
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip==$(PIP_VERSION) setuptools wheel
	$(PIP) install -q -c $(LOCK) torch torchvision
	$(PIP) install -q --no-build-isolation -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torchvision.ops, decord, faster_whisper, ray.data"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: system-deps $(STAMP)

demo: install
	$(PY) jobs/make_demo_data.py --out $(DEMO_CLIPS)
	$(PY) jobs/build_saber.py --config jobs/configs/demo_full.yaml --input $(DEMO_CLIPS) --output $(DEMO_OUT)

# SED-SFT on the demo's sed/ records: tiny Omni thinker, 2 CPU workers, DeepSpeed ZeRO-3 over gloo.
demo-sft: demo
	$(PY) jobs/train_sed.py --config jobs/configs/sft_demo.yaml data.sed=$(DEMO_OUT)/sed

# The whole lifecycle on the demo clips, resumable (a rerun skips finished steps): build -> SED-SFT -> CA-DPO
# (sample, judge, pair, train) -> SABER-Test evaluation of the SFT and the DPO model -> comparison -> summary page
# (outputs/lifecycle/summary/index.html). Tiny random models: it shows the machinery, not a good model.
LIFECYCLE_OUT ?= outputs/lifecycle
demo-lifecycle: install
	$(PY) jobs/make_demo_data.py --out $(DEMO_CLIPS)
	$(PY) jobs/lifecycle.py --clips $(DEMO_CLIPS) --output $(LIFECYCLE_OUT)

# Two workers (pytest-xdist): on 2 cores the end-to-end tests spend much of their time waiting for processes,
# Ray actors and loopback servers, which the other worker fills. loadgroup keeps the Ray Train tests on one worker
# (tests/conftest.py::RAY_TRAIN) and hands out every other test one by one, slow ones first.
PYTEST := -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=25
test: install browser-deps
	$(PY) $(PYTEST)

# The lock from pyproject.toml's ranges, keeping the pinned versions that still satisfy them (after adding or
# changing a dependency). `make lock-upgrade` takes the newest allowed versions instead; run `make test` on it
# (and `make test-latest` shows beforehand what the newest versions would break).
$(PIPTOOLS)/pip-compile:
	python3 -m venv .cache/piptools && $(PIPTOOLS)/pip install -q pip-tools==7.6.2

lock: $(PIPTOOLS)/pip-compile
	$(COMPILE)

lock-upgrade: $(PIPTOOLS)/pip-compile
	$(COMPILE) --upgrade

# The upgrade check: the newest versions pyproject.toml allows, in a venv of their own (.venv-latest), then the
# suite. Not part of CI: it tells us about an upstream release before a user's fresh install does.
LATEST := .venv-latest
test-latest: system-deps browser-deps
	rm -rf $(LATEST) && python3 -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip setuptools wheel
	$(LATEST)/bin/pip install -q --upgrade $$(python3 .ci/versions.py ranges torch torchvision)
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager --no-build-isolation -e '.[dev]'
	$(LATEST)/bin/python .ci/versions.py drift $(LOCK)
	SABER_UNLOCKED=1 $(LATEST)/bin/python $(PYTEST)

lint: install
	$(VENV)/bin/ruff check engine train jobs tests

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
