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

venv:
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip >/dev/null
	@$(PIP) install -q scikit-build-core pybind11 ninja cmake

# Rebuilds the extension only when native sources or the build description changed.
build: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard native/*.cpp native/*.hpp native/*.h)
	@$(PIP) install -q --no-build-isolation -e '.[test,bench]'
	@touch $@

demo: setup
	@$(VENV)/bin/bknrctl demo

test: setup
	@$(PY) -m pytest -q -p no:cacheprovider tests

bench: setup
	@for b in engine store cluster; do $(PY) bench/$${b}_bench.py --quick || exit 1; done

chaos: setup
	@$(PY) -m tests.chaos.long_run

lint: setup
	@$(VENV)/bin/ruff check .

clean:
	rm -rf build $(VENV) .deps
