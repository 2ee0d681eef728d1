# Two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint fuzz bench clean lock install install-units soak

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

# ARGS: the demo's flags, e.g. make demo ARGS='--set api.port=9090 --mode serial'
demo: $(STAMP)
	$(BIN)/edge demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check edge firmware_bridge kernels webui hw_sim tests benchmarks
	$(BIN)/ruff format --check edge firmware_bridge kernels webui hw_sim tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy --strict --follow-imports=silent firmware_bridge/stream2_codec.py firmware_bridge/hdf5_chunks.py \
		firmware_bridge/stream2_reader.py firmware_bridge/stream_codec.py firmware_bridge/udp_codec.py
	$(BIN)/mypy --strict --follow-imports=silent edge/upstream/protocol.py edge/upstream/session.py \
		edge/upstream/outlook.py edge/alarms.py edge/counter_scopes.py webui/live.py

# the numba peak finder compiled first, one process per frame dtype (tests/warm_kernels.py: ~1 min
# less than both workers compiling it), then the unit tests on 2 workers (whole files per worker):
# much of their time is numba compiling kernels, one core each, and what they compile is cached for the
# system tests' daemons that follow. The browser and system tests on 2 workers as well (7 min instead
# of 12: most of it is waiting on paced daemons); each worker picks loopback ports from its own slice
# (tests/conftest.py)
test: lint
	$(BIN)/python tests/warm_kernels.py
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/unit
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/browser tests/system

fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/fuzz_udp_codec.py --runs 100000
	$(BIN)/python tests/fuzz/fuzz_stream_codec.py --runs 100000
	$(BIN)/python tests/fuzz/fuzz_stream2_codec.py --runs 100000
	EDGE_API_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest tests/unit/webui/test_api_fuzz.py -q -p no:cacheprovider
	EDGE_PV_FUZZ_PUTS=50000 $(BIN)/python -m pytest tests/system/test_pv_fuzz.py -q -p no:cacheprovider

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/kernels.py

# -- running as a service (README "Running as a service") -----------------------------------------------
# `sudo make install`: a venv under $(PREFIX) from the lock, the systemd units, /etc/edge/edge.toml (kept
# if present), the `edge` user. `make install-units DESTDIR=/tmp/stage` stages units and config only.
PREFIX ?= /opt/edge
UNIT_DIR ?= /etc/systemd/system
CONF_DIR ?= /etc/edge
SYSUSERS_DIR ?= /usr/lib/sysusers.d
UNITS := edge.service edge-pull.service edge-sim.service

install-units:
	install -d $(DESTDIR)$(UNIT_DIR) $(DESTDIR)$(CONF_DIR) $(DESTDIR)$(SYSUSERS_DIR)
	for unit in $(UNITS); do \
		sed 's|/opt/edge/venv/bin/edge|$(PREFIX)/venv/bin/edge|' systemd/$$unit > $(DESTDIR)$(UNIT_DIR)/$$unit; \
		chmod 0644 $(DESTDIR)$(UNIT_DIR)/$$unit; \
	done
	install -m 0644 systemd/edge.sysusers.conf $(DESTDIR)$(SYSUSERS_DIR)/edge.conf
	test -e $(DESTDIR)$(CONF_DIR)/edge.toml || install -m 0644 systemd/edge.toml $(DESTDIR)$(CONF_DIR)/edge.toml
	if [ -z "$(DESTDIR)" ]; then systemd-sysusers $(SYSUSERS_DIR)/edge.conf && systemctl daemon-reload; fi

install: install-units
	test -x $(DESTDIR)$(PREFIX)/venv/bin/python || $(PYTHON) -m venv $(DESTDIR)$(PREFIX)/venv
	$(DESTDIR)$(PREFIX)/venv/bin/python -m pip install --quiet -c $(LOCK) .
	@echo "installed; now: systemctl enable --now edge   (HPC side: edge-pull; technicians: edge-sim)"

# a long run at a steady rate with retention purging; figures per minute to benchmarks/results/
SOAK_MINUTES ?= 10
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .hypothesis
