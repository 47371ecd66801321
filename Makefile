# taskflow: `make dev` runs it locally, `make test` runs the tests, `make bench` measures,
# `make soak` runs the chaos suite for longer.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install dev test test-unit bench soak migrate lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# All roles in one process. Embedded PostgreSQL and Redis (data in .taskflow/) unless
# TASKFLOW_DATABASE_URL / TASKFLOW_REDIS_URL are set.
dev: $(STAMP)
	$(VENV)/bin/taskflow dev

# The whole suite: unit, integration (real PostgreSQL and Redis) and end-to-end (the CLI
# roles as processes). Uses embedded servers unless the URLs above are set.
test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

bench: $(STAMP)
	$(PY) -m benchmarks

# The chaos run of tests/e2e/test_chaos.py, longer and bigger: SOAK_SECONDS of faults
# (default 300) over SOAK_JOBS jobs (default 100000); SOAK_SEED repeats a run.
soak: $(STAMP)
	$(PY) -m tests.chaos

migrate: $(STAMP)
	$(VENV)/bin/taskflow migrate

clean:
	rm -rf $(VENV) .pytest_cache
