"""The shipped dashboard and alert rules: promtool lints and unit-tests the rules, the
dashboard type-checks against Grafana's published schema, and every metric either names
is one taskflow exports (or one the notifier role will). That each panel has data is
proven against a real Prometheus in tests/e2e/test_observability.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest
from taskflow import metrics
from tests.observability import (
    DASHBOARD, ROOT, RULE_TESTS, RULES, metric_names, panels, promtool,
    rules,
)

needs_promtool = pytest.mark.skipif(
    promtool() is None, reason="promtool is not installed (apt-get install -y prometheus; "
                               ".ci/run installs it)")

# Exported by taskflow.stats (after its first refresh) and by the API's own registry.
_LATE = {"taskflow_queue_jobs", "taskflow_queue_oldest_ready_age_seconds",
         "taskflow_queue_workers", "taskflow_workers_alive", "taskflow_queue_stats_age_seconds",
         "taskflow_api_request_duration_seconds"}


def _exported() -> set[str]:
    names = set(_LATE)
    for family in metrics.REGISTRY.families:
        names.add(family.name + family.suffix)
    return names


@needs_promtool
def test_the_alert_rules_lint_clean():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 9 rules found" in out.stdout


@needs_promtool
def test_every_alert_fires_when_it_should_and_only_then():
    out = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True,
                         text=True, timeout=60, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = RULE_TESTS.read_text()
    for rule in rules():
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no unit test"


def test_dashboard_and_rules_read_only_metrics_that_exist():
    exported = _exported()
    for expr in [t["expr"] for p in panels() for t in p["targets"]] + [
            r["expr"] for r in rules()]:
        unknown = metric_names(expr) - exported
        assert not unknown, f"{expr!r} reads metrics nobody exports: {unknown}"


def test_dashboard_uses_the_datasource_variable_and_queue_and_task_filters():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["queue"]["includeAll"] and variables["task"]["includeAll"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            if ("taskflow_queue_" in expr and "stats_age" not in expr) or any(
                    f"taskflow_jobs_{n}" in expr for n in ("submitted", "started", "finished")):
                assert 'queue=~"$queue"' in expr, expr
            if "taskflow_jobs_started" in expr or "taskflow_jobs_finished" in expr:
                assert 'task=~"$task"' in expr, expr
            assert "[5m]" not in expr and "[1m]" not in expr, "use $__rate_interval"


def _grafana_schema() -> str | None:
    """A folder with @grafana/schema and typescript installed (.ci/run installs them; a
    developer's first run does, where npm exists)."""
    folder = os.environ.get("TASKFLOW_GRAFANA_SCHEMA_DIR") or str(ROOT / ".ci/grafana-schema")
    tsc = os.path.join(folder, "node_modules/.bin/tsc")
    if not os.path.exists(tsc) and shutil.which("npm"):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", folder,
                        "@grafana/schema", "typescript"], capture_output=True, timeout=300)
    return folder if os.path.exists(tsc) else None


def test_the_dashboard_satisfies_grafanas_schema():
    folder = _grafana_schema()
    if folder is None:
        pytest.skip("npm cannot install @grafana/schema and typescript here")
    check = os.path.join(folder, f"check-{uuid.uuid4().hex[:8]}.ts")
    with open(check, "w") as f:
        f.write('import type { Dashboard } from "@grafana/schema";\n'
                f"const dashboard = {DASHBOARD.read_text().strip()} satisfies Dashboard;\n"
                "export default dashboard;\n")
    try:
        out = subprocess.run(
            [os.path.join(folder, "node_modules/.bin/tsc"), "--noEmit", "--strict",
             "--skipLibCheck", "--moduleResolution", "bundler", "--module", "esnext",
             "--target", "es2020", check], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(check)
    assert out.returncode == 0, out.stdout + out.stderr
