# cloudkd: two commands on a fresh machine with Python 3.11 — `make demo` and `make test`.
# Both create the virtual environment and install the pinned requirements when missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cloudkd-installed
# pip prints one harmless warning per package about this machine's local mirrors; keep the log readable
PIPQUIET := { grep -v "^WARNING: Location 'file:" || true; }

# the On Cloud N runtime's Python 3.9 + torch 1.8.0 (scripts/runtime_env.sh), built once per machine outside the
# clone and linked as .runtime-py39; the tests run the packed main.py under it
RUNTIME_LINK := .runtime-py39

.PHONY: demo test install runtime-env clean-runs

demo: $(STAMP)
	$(BIN)/cloudkd demo

test: $(STAMP) runtime-env
	$(BIN)/python -m pytest -q

runtime-env: $(STAMP)
	bash scripts/runtime_env.sh --link $(RUNTIME_LINK) $(BIN)/python

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-test.txt 2>&1 | $(PIPQUIET)
	$(BIN)/python -m pip install -q --no-deps -e . 2>&1 | $(PIPQUIET)
	$(BIN)/python -c "import cloudkd, torch, pytorch_lightning, segmentation_models_pytorch, nnunetv2"
	touch $(STAMP)

clean-runs:
	rm -rf runs data/generated
