# Two set-up commands (see README): `make demo` and `make test`. Both work on a fresh clone:
# they make their own virtualenv, install the project from its own files, and start real
# servers (TimescaleDB and Mosquitto) through `rpmstore db up` or the test suite's fixtures.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test quick lint bench loadtest soak install host-deps db-up db-down clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(INSTALLED)

# The embedded stack needs debootstrap (Debian-family hosts, as root) unless a Docker engine
# runs or DATABASE_URL/MQTT_URL point at existing servers; install it when we can.
host-deps:
	@if ! command -v debootstrap >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing debootstrap (once)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; \
	fi
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	fi

demo: host-deps install
	RPMSTORE_LOG_FORMAT=console $(BIN)/rpmstore db up
	RPMSTORE_LOG_FORMAT=console $(BIN)/rpmstore migrate up
	RPMSTORE_LOG_FORMAT=console $(BIN)/rpmstore demo

# The documentation site (docs/, mkdocs.yml) builds strict: a broken link or anchor, or a page
# left out of the nav, fails the lint.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: host-deps lint
	$(BIN)/python -m pytest

# The inner loop: everything but the tests marked slow (fault injection, re-chunk runs, whole
# stacks and wards, Schemathesis); no lint. `make test` still runs everything.
quick: host-deps install
	$(BIN)/python -m pytest -m "not slow"

# Speed, not behaviour: ratio benchmarks against baselines measured in the same run
# (reports/bench-*.json). Not part of `make test`.
# Every benchmarks/test_*.py, then one merged table: reports/bench.json and reports/bench.md.
bench: host-deps install
	$(BIN)/python -m pytest benchmarks -s; status=$$?; \
	    $(BIN)/python -m benchmarks.report && exit $$status

# Locust against the local stack (loadtests/run.py): devices over HTTP and MQTT, judged by the
# objectives in loadtests/loadtest.toml; reports in reports/loadtest/.
LOADTEST_DURATION ?= 60s
DURATION ?= 30m

loadtest: host-deps install
	$(BIN)/rpmstore db up
	$(BIN)/rpmstore migrate up
	$(BIN)/python -m loadtests.run --profile short --duration $(LOADTEST_DURATION)

soak: host-deps install
	$(BIN)/rpmstore db up
	$(BIN)/rpmstore migrate up
	$(BIN)/python -m loadtests.run --profile soak --duration $(DURATION)

db-up: host-deps install
	$(BIN)/rpmstore db up

db-down: install
	$(BIN)/rpmstore db down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache site
