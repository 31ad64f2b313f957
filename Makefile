# The pipeline, one target per stage. Every target installs what it needs.
#   make all      morphology -> mechanisms -> simulate -> fit-* -> evaluate -> report (small default)
#   make test     the test suite (what CI runs)
SHELL := /bin/bash
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a machine with CUDA use TORCH_SPEC="torch>=2.1"
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/quick.toml
DATA ?= data/quick
RUNS ?= runs/quick
REPORTS ?= reports
MORPHOLOGY_ARG := $(if $(MORPHOLOGY),--morphology $(MORPHOLOGY),)
PIPE := $(PY) -m pipelines

.PHONY: all install morphology mechanisms simulate fit-elm fit-branch-elm fit-tcn fit-lstm evaluate report validate \
        test test-slow bench clean

all: report

$(VENV)/.installed: pyproject.toml
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

morphology: install
	$(PIPE) morphology

mechanisms: install
	$(PIPE) mechanisms

simulate: morphology mechanisms
	$(PIPE) simulate --config $(CONFIG) --out $(DATA) $(MORPHOLOGY_ARG)

fit-elm: simulate
	$(PIPE) fit --model elm --config $(CONFIG) --data $(DATA) --out $(RUNS)/elm

fit-branch-elm: simulate
	$(PIPE) fit --model branch-elm --config $(CONFIG) --data $(DATA) --out $(RUNS)/branch-elm

fit-tcn: simulate
	$(PIPE) fit --model tcn --config $(CONFIG) --data $(DATA) --out $(RUNS)/tcn

# the LSTM baseline (858k parameters) is not part of `make all`; `make fit-lstm evaluate` adds it
fit-lstm: simulate
	$(PIPE) fit --model lstm --config $(CONFIG) --data $(DATA) --out $(RUNS)/lstm

evaluate: fit-elm fit-branch-elm fit-tcn
	$(PIPE) evaluate --config $(CONFIG) --data $(DATA) --runs $(RUNS)

report: evaluate
	$(PIPE) report --runs $(RUNS) --data $(DATA) --out $(REPORTS)

validate: morphology mechanisms
	$(PIPE) validate --config configs/validate.toml --out data/validate $(MORPHOLOGY_ARG)

test: morphology mechanisms
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: morphology mechanisms
	$(PY) -m pytest -m "slow" -q

bench: morphology mechanisms
	$(PY) bench/simulation_speed.py

clean:
	rm -rf build runs reports data/quick
