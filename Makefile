# sambay developer entry points. On a fresh machine: `make run` and `make test` do all set-up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU machines carry a local CPU build of torch 2.13.0; pip takes it for this spec.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test run lint test-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not gpu"

# The main job on the embedded demo model: a short arithmetic reasoning generation, on the CPU.
run: install
	$(VENV)/bin/sambay generate --prompt "What is 37 + 48?"

lint: install
	$(VENV)/bin/ruff check sambay_cli tests tools

# GPU machine: use its own python3 and torch, no network, no dependency resolution.
test-gpu:
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation --no-index -e . || true
	PYTHONPATH=$(CURDIR):$$PYTHONPATH $(PYTHON) -m pytest -q -m gpu $$(grep -l "mark.gpu" tests/test_*.py)

clean:
	rm -rf $(VENV) build *.egg-info
