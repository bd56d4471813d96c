# Two commands: `make demo` (train the demo preset on built-in data, then sample) and `make test`.
# Both bootstrap a virtual environment on a fresh machine; nothing is downloaded but packages.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The tested PyTorch pair; any torch>=2.4 works (setup.py declares the ranges).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
GPU_CHECK_DIR ?= runs/gpu-check

.PHONY: demo test lint venv clean soak gpu-check

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,latent,onnx,shards]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ddgan.cli demo --outdir=$(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

soak: $(STAMP)
	$(PY) -m ddgan.soak

# On one NVIDIA GPU, in at most 8 minutes: build the kernels (they check themselves), run their CUDA tests,
# train the demo preset 200 steps and run the GPU benchmark rows; writes $(GPU_CHECK_DIR)/gpu-check.md and
# gpu-check.jsonl, and fails on any mismatch. Without a GPU: one line, after checking that all of it would start.
gpu-check: $(STAMP)
	$(PY) -m eval.gpu_check --out=$(GPU_CHECK_DIR)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
