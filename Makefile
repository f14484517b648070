# Every target runs inside the project virtual environment at .venv (rule 9).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PKG_CONFIG_PATH := $(CURDIR)/.deps/raft/lib/pkgconfig:$(PKG_CONFIG_PATH)

.PHONY: setup deps venv build demo test bench chaos lint clean

setup: deps venv build

deps:
	@bash scripts/install-deps.sh

venv: $(PY)
$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q scikit-build-core pybind11 ninja cmake setuptools wheel

# Reinstalls (incrementally, the CMake build dir is kept) only when a source changed.
build: $(VENV)/.installed
SOURCES := $(shell find bknr_cluster cli examples native -name '*.py' -o -name '*.cpp' -o -name '*.hpp' -o -name '*.h' 2>/dev/null)
$(VENV)/.installed: pyproject.toml CMakeLists.txt $(SOURCES)
	@$(PIP) install -q --no-build-isolation -e '.[test,bench]'
	@touch $@

demo: setup
	@$(VENV)/bin/bknrctl demo

test: setup
	@$(PY) -m pytest -q -p no:cacheprovider tests

bench: setup
	@for b in engine store cluster app tls; do $(PY) bench/$${b}_bench.py --quick || exit 1; done

chaos: setup
	@$(PY) -m tests.chaos.long_run

lint: setup
	@$(VENV)/bin/ruff check .

clean:
	rm -rf build $(VENV) .deps
