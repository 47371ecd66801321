"""What the observability tests share: the dashboard's and the alert rules' expressions,
the notifier's metric names, and a real Prometheus server as a context manager."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from taskflow.adapters.embedded import free_port
from tests.helpers import stop_process

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "helm/taskflow/dashboards/taskflow.json"
RULES = ROOT / "helm/taskflow/alerts/taskflow.rules.yaml"
RULE_TESTS = ROOT / "tests/alerts/taskflow.rules.test.yaml"

# What Grafana substitutes, for queries made outside Grafana: every queue and task, and
# a window that covers a short test run.
VARIABLES = {"$queue": ".*", "$task": ".*", "$__rate_interval": "1m", "$__range": "5m"}

_METRIC = re.compile(r"\btaskflow_[a-z0-9_]+")


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (a histogram's series by the histogram's)."""
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in _METRIC.findall(expr)}


def panels() -> list[dict]:
    """The dashboard's panels that query (rows left out)."""
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("targets")]


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def promtool() -> str | None:
    return shutil.which("promtool")


class Prometheus:
    """``prometheus`` on a loopback port, scraping ``targets`` every second and
    evaluating the alert rules; stopped (and its data removed) when the block ends,
    also when it fails."""

    def __init__(self, binary: str, targets: dict[str, str]) -> None:
        self.binary = binary
        self.targets = targets  # job name -> URL of a metrics page

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        folder = Path(tempfile.mkdtemp(prefix="taskflow-prometheus-"))
        port = free_port()
        scrape = []
        for job, url in self.targets.items():
            host_port, _, path = url.removeprefix("http://").partition("/")
            scrape.append({"job_name": job, "metrics_path": "/" + path,
                           "static_configs": [{"targets": [host_port]}]})
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)], "scrape_configs": scrape}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(folder / "prometheus.log", "wb")
        process = subprocess.Popen(
            [self.binary, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(process)
            log.close()
            self.log = (folder / "prometheus.log").read_text(errors="replace")
            shutil.rmtree(folder, ignore_errors=True)


def wait(predicate, timeout: float, what: str):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
