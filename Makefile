# fraudops: every command a user needs. `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The state folder the UIs read: FRAUDOPS_STATE_DIR when set, as every fraudops command reads it.
STATE_DIR := $(or $(FRAUDOPS_STATE_DIR),.fraudops)

## help: list the targets
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

# The venv is rebuilt when the pins or this recipe change. uv resolves nothing here: it installs the
# lock as is, compiled to bytecode: where PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines), every
# process would otherwise compile its imports from source again (8 of the 19 s that importing the
# flows took here), and the tests start dozens of processes.
$(STAMP): pyproject.toml requirements.lock Makefile
	@test -d $(VENV) || $(MAKE) --no-print-directory venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# .venv from $(PYTHON); where it is missing but another Python 3 is there (Ubuntu 24.04's 3.12, macOS's
# 3.13), uv (installed into a throwaway venv of that Python) makes .venv on a Python 3.11 it finds or
# downloads: a managed interpreter, fetched once into uv's cache.
.PHONY: venv
venv:
	@if command -v $(PYTHON) >/dev/null; then \
	  $(PYTHON) -m venv $(VENV); \
	elif command -v python3 >/dev/null; then \
	  echo "$(PYTHON) not found: getting Python 3.11 through uv (downloaded if no 3.11 is installed)"; \
	  rm -rf $(VENV).uv && python3 -m venv $(VENV).uv && \
	  $(VENV).uv/bin/python -m pip install --quiet --disable-pip-version-check uv==0.13.9 && \
	  $(VENV).uv/bin/uv venv --quiet --seed --python 3.11 $(VENV); \
	  status=$$?; rm -rf $(VENV).uv; exit $$status; \
	else \
	  echo "Python 3 is needed: install Python 3.11 (or any Python 3, and make gets 3.11 through uv)"; exit 1; \
	fi

## install: create .venv and install the pinned project
install: $(STAMP)

## demo: run the whole pipeline end to end on embedded defaults (simulate, features, train, serve, replay, monitor)
demo: install
	$(BIN)/fraudops demo

## test: run the test suite (integration tests use the local PostgreSQL and Redis; mandatory when CI=true)
# Two pytest-xdist workers, each test file on one worker (its fixtures are shared); the tests marked
# serial assert on times, so they run alone afterwards.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial" --durations=12
	$(BIN)/python -m pytest -q -m serial

## compose-test: docker-compose.yml on podman: build its images, start it in order, drive it end to end and through faults, remove it
compose-test: install
	$(BIN)/uv pip install --quiet --python $(BIN)/python podman-compose==1.6.0
	$(BIN)/python -m pytest -q tests/compose/check_compose.py

## bench: measure every part beside a peer in the same run (tables; JSON with BENCH_JSON=path)
bench: install bench-tools
	$(BIN)/fraudops bench $(if $(BENCH_JSON),--json $(BENCH_JSON))

# The serving section's load generators, from Debian's packages (installed when running as root).
bench-tools:
	@command -v wrk >/dev/null && command -v hey >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk hey >/dev/null; } || \
	  { echo "make bench needs wrk and hey (Debian packages wrk and hey) for its serving section"; exit 1; }

## docs: render every figure in README.md and docs/ from the docs/results/ file its marker names
docs: install
	$(BIN)/fraudops docs

## mlflow-ui: browse runs and the model registry at http://127.0.0.1:5000 (the state folder: FRAUDOPS_STATE_DIR, default .fraudops)
mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(STATE_DIR))/mlflow.db --port 5000

## monitor-ui: the Evidently UI over every monitor run at http://127.0.0.1:8001 (FRAUDOPS_STATE_DIR, default .fraudops)
monitor-ui: install
	$(BIN)/evidently ui --workspace $(STATE_DIR)/evidently --port 8001

## serve: run the API on embedded defaults at http://127.0.0.1:8000/docs
serve: install
	$(BIN)/fraudops serve

## lock: re-resolve requirements.lock from pyproject.toml (only when changing a pin)
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock --quiet

## clean: remove the state folder (data, models, reports); keeps .venv
clean:
	rm -rf $(STATE_DIR)

.PHONY: help install demo test compose-test bench bench-tools docs mlflow-ui monitor-ui serve lock clean
