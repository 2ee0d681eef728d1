# Two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint fuzz bench clean lock

LOCK := requirements.lock
# every install takes the versions pinned in $(LOCK) (`make lock` refreshes it), so a fresh clone gets
# the tested versions on any day
PIP_INSTALL := $(BIN)/python -m pip install --quiet -c $(LOCK)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

# regenerate the lock from pyproject.toml (all extras but gpu, whose wheels depend on the CUDA version)
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --upgrade -o $(LOCK)

demo: $(STAMP)
	$(BIN)/edge demo

lint: $(STAMP)
	$(BIN)/ruff check edge firmware_bridge kernels webui hw_sim tests benchmarks
	$(BIN)/ruff format --check edge firmware_bridge kernels webui hw_sim tests benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/fuzz_udp_codec.py --runs 100000
	$(BIN)/python tests/fuzz/fuzz_stream_codec.py --runs 100000
	$(BIN)/python tests/fuzz/fuzz_stream2_codec.py --runs 100000

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache .hypothesis
