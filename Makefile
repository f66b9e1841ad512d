# Set-up is folded into each target: a local venv is created or reused, torch==2.13.0 (the CPU build) is
# installed unless a torch is already there, then the project with its dev extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.recsys-installed

.PHONY: run test test-slow lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,text]"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/recsys fit --run-dir runs/main

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check recsys tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py --dataset ml-latest-small --path ../shared/datasets/ml-latest-small

clean:
	rm -rf runs .pytest_cache
