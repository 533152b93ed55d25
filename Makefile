# Set-up commands (see README.md). Each installs what it needs into .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, at the exact pin (a CPU build here); then the package and its dev extras;
# panopticapi-lite without its (numpy<2) dependencies: only its evaluation code is used, as a test oracle.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps panopticapi-lite==0.2.0
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check maskformer tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/maskformer demo --out demo_output

clean:
	rm -rf $(VENV) demo_output
