# Two commands on a fresh machine: `make demo` (build the SABER clip table from a generated sample set)
# and `make test`. Both create .venv and install what they need, system packages included.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_CLIPS ?= .cache/demo_clips
DEMO_OUT ?= outputs/demo

.PHONY: demo demo-sft test lint system-deps install clean

system-deps:
	@if ! command -v ffmpeg >/dev/null || ! command -v espeak-ng >/dev/null; then \
		echo "installing ffmpeg and espeak-ng with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng; \
	fi

# Torch and torchvision first, as a matching pair (the Qwen video processors need torchvision); then the
# project without build isolation, so DeepSpeed's setup sees that torch instead of fetching another.
$(STAMP): pyproject.toml
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	$(PY) -c "import torchvision.ops, decord, faster_whisper, ray.data"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: system-deps $(STAMP)

demo: install
	$(PY) jobs/make_demo_data.py --out $(DEMO_CLIPS)
	$(PY) jobs/build_saber.py --config jobs/configs/demo_full.yaml --input $(DEMO_CLIPS) --output $(DEMO_OUT)

# SED-SFT on the demo's sed/ records: tiny Omni thinker, 2 CPU workers, DeepSpeed ZeRO-3 over gloo.
demo-sft: demo
	$(PY) jobs/train_sed.py --config jobs/configs/sft_demo.yaml data.sed=$(DEMO_OUT)/sed

test: install
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check engine train jobs tests

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
