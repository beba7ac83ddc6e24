# `make demo` and `make test` do their own set-up from a fresh clone: a .venv with the project and its extras.
# The install is stamped with a hash of pyproject.toml, so a second run skips it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# FAISS build: gpu where nvidia-smi exists, else cpu (FAISS=cpu|gpu overrides); the two cannot share an environment
FAISS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)
OTHER_FAISS := $(if $(filter gpu,$(FAISS)),faiss-cpu,faiss-gpu)
STAMP := $(VENV)/.installed-$(FAISS)-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
DEMO_DIR ?= runs/demo

# CPU-only machines: DeepSpeed's CPU accelerator (gloo); its JIT-built ops are cached across clones.
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
export DS_ACCELERATOR ?= cpu
endif
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/stground/torch_extensions
export RAY_AUTH_MODE ?= token
export PYTHONUNBUFFERED := 1

.PHONY: install demo demo-stvg test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	# PyPI's torch (its CUDA build runs on CPU too) first: DeepSpeed's build imports it.
	$(BIN)/pip install -q "torch>=2.4" torchvision
	$(BIN)/pip uninstall -y -q $(OTHER_FAISS) 2>/dev/null || true
	$(BIN)/pip install -q -c constraints.txt --no-build-isolation -e ".[dev,$(FAISS)]"
	$(BIN)/python -m index.faiss_build
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	@if [ -f cluster/demo.py ]; then $(BIN)/python -m cluster.demo --out $(DEMO_DIR); \
	else echo "make demo: the demo pipeline (sharding, pretraining) has not landed yet; see README Status" >&2; exit 1; fi

# the STVG track: synthetic STVG corpus, pretraining, baselines and the VCMA/WINNER/FSM heads (configs/demo_stvg.yaml)
STVG_DEMO_DIR ?= runs/demo_stvg
demo-stvg: install
	$(BIN)/python -m cluster.demo --config configs/demo_stvg.yaml --out $(STVG_DEMO_DIR)

# the suite waits on process and Ray start-ups more than it computes: two pytest workers, each with its own session
# (one Ray, one S3 server), a test file never split between them (module fixtures are built once)
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
