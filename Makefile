# Two entry points: `make run` (the main job) and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for the torch install, e.g. a CPU or CUDA wheel index (see README).
TORCH_PIP_ARGS ?=
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_CUDA),1)
TORCH_SPEC := torch==$(TORCH_VERSION)
else
TORCH_SPEC := torch==$(TORCH_VERSION)+cpu
endif

export RAY_USAGE_STATS_ENABLED := 0
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test install smoke-data

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
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
