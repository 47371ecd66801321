# taskflow: one image for every role (serve, work, notify, migrate).
#   docker build -t taskflow .                    (make image)
# Offline builds (no package index reachable): put every wheel in wheelhouse/ and pass
# --build-arg PIP_NO_INDEX=1 (make image OFFLINE=1 does both).
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Unset unless passed: pip reads them from the environment.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS=/wheelhouse
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md ./
COPY src/ src/
# Build taskflow's wheel (and any dependency without one) here, then install the wheels
# into a virtualenv that the runtime stage copies; compilers and caches stay behind.
RUN python3 -m pip wheel --wheel-dir /wheels ".[aws]" "dumb-init>=1.2" \
 && python3 -m venv /opt/taskflow \
 && /opt/taskflow/bin/pip install --no-index --find-links /wheels "taskflow[aws]" dumb-init \
 && /opt/taskflow/bin/pip uninstall --yes pip \
 && find /opt/taskflow -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/taskflow/bin/python -m compileall -q /opt/taskflow/lib

FROM ${BASE_IMAGE}
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="taskflow" \
      org.opencontainers.image.description="Distributed task scheduler: API, worker, notifier and migrations in one image" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/taskflow/taskflow" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
RUN groupadd --system --gid 10001 taskflow \
 && useradd --system --uid 10001 --gid taskflow --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin taskflow
COPY --from=build /opt/taskflow /opt/taskflow
WORKDIR /app
COPY settings.toml ./
COPY migrations/ migrations/
# Production defaults for containers: listen on every interface of the pod, the bundled
# migrations, logs straight to stdout. Everything else comes from settings files
# (TASKFLOW_SETTINGS_FILES), SSM (TASKFLOW_SSM_PATH) or TASKFLOW_* variables.
ENV PATH=/opt/taskflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKFLOW_ENV=production \
    TASKFLOW_MIGRATIONS_DIR=/app/migrations \
    TASKFLOW_DATA_DIR=/tmp/taskflow \
    TASKFLOW_API__HOST=0.0.0.0 \
    TASKFLOW_WORKER__METRICS_HOST=0.0.0.0 \
    TASKFLOW_NOTIFY__METRICS_HOST=0.0.0.0
USER 10001:10001
# API, worker metrics, notifier metrics.
EXPOSE 8000 9101 9102
# dumb-init is PID 1: it forwards SIGTERM to taskflow (graceful shutdown) and reaps. With
# TASKFLOW_WORKER__PROCESSES / TASKFLOW_API__WORKERS above 1, taskflow is a supervisor that
# passes the signal on to its processes (they run in their own session).
ENTRYPOINT ["dumb-init", "--", "taskflow"]
CMD ["serve"]
