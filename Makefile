# taskflow: `make dev` runs it locally, `make test` runs the tests, `make bench` measures,
# `make soak` runs the chaos suite for longer.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install dev test test-unit bench soak migrate lint clean image wheelhouse test-image test-deploy \
	console-vendor test-browser

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

# ruff, at the version the GitHub workflow pins (.github/workflows/ci.yml).
RUFF_VERSION := 0.17.6
lint: $(STAMP)
	$(PY) -m pip install -q "ruff==$(RUFF_VERSION)"
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks

# The chaos run of tests/e2e/test_chaos.py, longer and bigger: SOAK_SECONDS of faults
# (default 300) over SOAK_JOBS jobs (default 100000); SOAK_SEED repeats a run.
soak: $(STAMP)
	$(PY) -m tests.chaos

migrate: $(STAMP)
	$(VENV)/bin/taskflow migrate

# The image (Dockerfile). BASE_IMAGE=... picks another base; OFFLINE=1 builds from the
# wheels in wheelhouse/ (make wheelhouse) with no package index.
IMAGE ?= taskflow:dev
DOCKER ?= docker
image:
	$(DOCKER) build --tag $(IMAGE) \
	  --build-arg VERSION=$$(git describe --tags --always --dirty 2>/dev/null || echo dev) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(OFFLINE),--network host --build-arg PIP_NO_INDEX=1) .

wheelhouse: $(STAMP)
	$(PY) -m pip wheel --quiet --wheel-dir wheelhouse '.[aws]' 'dumb-init>=1.2' 'setuptools>=68'
	rm -f wheelhouse/taskflow-*.whl

# Builds the image on a private dockerd and runs every role from it (root, docker.io,
# iptables and debootstrap needed; skips saying why without them).
test-image: $(STAMP)
	RUN_IMAGE_TESTS=1 $(PY) -m pytest -q -rs -s tests/image

# The Helm chart, the GitHub workflows and the Dockerfile, checked by their real tools.
DEPLOY_STAMP := $(VENV)/.deploy-checks-stamp
$(DEPLOY_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[test,deploy-checks]'
	touch $(DEPLOY_STAMP)

test-deploy: $(DEPLOY_STAMP)
	RUN_DEPLOY_TESTS=1 $(PY) -m pytest -q -rs tests/deploy

# The console's front-end libraries from the npm registry (versions and checksums in
# src/taskflow/console/vendor-lock.json) into src/taskflow/console/static/vendor/, where
# they are committed: only this target needs npm. UPDATE=1 after a version bump.
console-vendor:
	$(PYTHON) scripts/console_vendor.py $(if $(UPDATE),--update)

# The console in a real Chromium (Debian's /usr/bin/chromium; Playwright never downloads
# a browser) against a live API and worker. Screenshots in test-results/browser/.
BROWSER_STAMP := $(VENV)/.browser-tests-stamp
$(BROWSER_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[test,browser-tests]'
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP)
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 RUN_BROWSER_TESTS=1 $(PY) -m pytest -q -rs -p no:cacheprovider tests/browser

clean:
	rm -rf $(VENV) .pytest_cache build
