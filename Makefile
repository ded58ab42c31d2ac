# ecomllm -- the two commands of the README:
#   make demo   set everything up on a fresh Debian + Python machine, build, run the demo
#   make test   set everything up, build, run the C++ (GoogleTest via ctest) and Python tests
# Every target installs what it needs itself (apt packages, pip packages) and skips what is there.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
BUILD_DIR ?= build
APT_PACKAGES := build-essential pkg-config libeigen3-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev libopenblas-openmp-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PIP_QUIET := -q --disable-pip-version-check --root-user-action=ignore

.PHONY: all deps-system deps-build build build-test dev test test-cpp test-python demo nf4-demo bench clean

all: build

# System libraries the C++ core links (found by CMake as system packages).
deps-system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Python build tools (the editable install builds without isolation so rebuilds are incremental).
deps-build:
	$(PIP) install $(PIP_QUIET) "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.20" ninja numpy ml_dtypes

# Editable install of the package; re-running it recompiles only what changed (build/py).
build: deps-system deps-build
	$(PIP) install $(PIP_QUIET) --no-build-isolation -e . -Cbuild-dir=$(BUILD_DIR)/py

# The same, plus the test/bench reference libraries (torch==2.13.0 CPU, bitsandbytes, ...).
build-test: deps-system deps-build
	$(PIP) install $(PIP_QUIET) --no-build-isolation -e ".[test,bench]" -Cbuild-dir=$(BUILD_DIR)/py

# Developer build without pip: the module lands in python/ecomllm/ (git-ignored) and the C++ tests
# in build/dev. pytest finds the package through pyproject's pythonpath setting, so after
# `make dev` run `python -m pytest tests/python/...` or `build/dev/ecomllm_cpp_tests`.
# (Do not combine with an editable install: its import hook would shadow this tree.)
dev: deps-system deps-build
	cmake -S . -B $(BUILD_DIR)/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DECOMLLM_BUILD_TESTS=ON \
	  -Dpybind11_DIR=$$($(PYTHON) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$$(command -v $(PYTHON)) \
	  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$(CURDIR)/python/ecomllm
	cmake --build $(BUILD_DIR)/dev -j2

test: test-cpp test-python

test-cpp: deps-system deps-build
	cmake -S . -B $(BUILD_DIR)/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release -DECOMLLM_BUILD_PYTHON=OFF -DECOMLLM_BUILD_TESTS=ON
	cmake --build $(BUILD_DIR)/cpp -j
	ctest --test-dir $(BUILD_DIR)/cpp --output-on-failure -j2

# pytest exits 5 when it collects no tests; like every non-zero status that fails the target.
test-python: build-test
	$(PYTHON) -m pytest

# The end-to-end demo: bundled catalogue -> tokenizer -> pre-trained tiny Llama -> QLoRA SFT -> report.
demo: build
	$(PYTHON) -m ecomllm demo --config configs/demo.yaml

# The NF4 quantization demonstration (error, storage, kernel speed).
nf4-demo: build
	$(PYTHON) -m ecomllm nf4-demo

bench: build-test
	$(PYTHON) benchmarks/bench_nf4.py --json

clean:
	rm -rf $(BUILD_DIR)
