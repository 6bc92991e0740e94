# Two entry points: `make run` (the main job) and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for the torch install (see README).
TORCH_PIP_ARGS ?=
UNAME_S := $(shell uname -s)
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# Which torch: the CUDA build from PyPI where `nvidia-smi` sees a GPU, PyPI's build on macOS (it has no
# CUDA), else the CPU build. TORCH_INDEX_URL is the wheel index tried when the package sources pip is
# configured with (pip config list) do not have TORCH_SPEC; empty: the configured sources only.
ifeq ($(HAS_CUDA),1)
TORCH_SPEC ?= torch==$(TORCH_VERSION)
TORCH_INDEX_URL ?=
else ifeq ($(UNAME_S),Darwin)
TORCH_SPEC ?= torch==$(TORCH_VERSION)
TORCH_INDEX_URL ?=
else
TORCH_SPEC ?= torch==$(TORCH_VERSION)+cpu
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
endif

export RAY_USAGE_STATS_ENABLED := 0
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test install smoke-data

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, so that no dependency pulls another build. A dry run (no download) asks whether
	@# the configured package sources have TORCH_SPEC; if not, TORCH_INDEX_URL is added.
	@$(PY) -c "import torch" 2>/dev/null || \
	if [ -z "$(TORCH_INDEX_URL)" ] || \
	    $(PIP) install --dry-run --no-deps --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS) >/dev/null 2>&1; then \
	  echo "$(PIP) install $(TORCH_SPEC) $(TORCH_PIP_ARGS)"; \
	  $(PIP) install "$(TORCH_SPEC)" $(TORCH_PIP_ARGS); \
	else \
	  echo "$(PIP) install $(TORCH_SPEC) --extra-index-url $(TORCH_INDEX_URL) $(TORCH_PIP_ARGS)"; \
	  $(PIP) install "$(TORCH_SPEC)" --extra-index-url "$(TORCH_INDEX_URL)" $(TORCH_PIP_ARGS); \
	fi
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro
	@PATH="$(abspath $(VENV))/bin:$$PATH" dvc metrics show
	@echo "Results: metrics/eval.json (dvc metrics show), outputs/history.csv (dvc plots show),"
	@echo "         checkpoints in ray_results/, every run in MLflow:"
	@echo "         $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1"

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

smoke-data: install
	$(VENV)/bin/fusionpipe data build synthetic --out data/shards/smoke --num-train 32 --num-val 16 --height 96 --width 128 --shard-size 8
