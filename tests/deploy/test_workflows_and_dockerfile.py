"""The GitHub workflows (actionlint, GitHub's workflow JSON schema, and what they must do)
and the Dockerfile (hadolint)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def load(name: str) -> dict:
    # YAML 1.1 reads the key `on` as True.
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def run_text(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def test_the_three_workflows_exist():
    assert {w.name for w in WORKFLOWS} == {"ci.yml", "release.yml", "deploy.yml"}


def test_actionlint_is_clean():
    result = subprocess.run([str(BIN / "actionlint"), "-no-color", *map(str, WORKFLOWS)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_an_outdated_action(tmp_path):
    """So that the check above means something: a node20 action is reported."""
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                   "      - uses: actions/checkout@v4\n")
    result = subprocess.run([str(BIN / "actionlint"), "-no-color", str(bad)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "node20" in result.stdout


def test_githubs_workflow_schema_accepts_them():
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                             "vendor.github-workflows", *map(str, WORKFLOWS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_release():
    for workflow in WORKFLOWS:
        for job in yaml.safe_load(workflow.read_text())["jobs"].values():
            for step in steps(job):
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})",
                                        step["uses"]), (workflow.name, step["uses"])


def test_ci_lints_tests_with_services_and_checks_the_artifacts():
    ci = load("ci.yml")
    assert {"pull_request", "push", "workflow_call"} <= set(ci["on"])
    assert ci["on"]["push"]["branches"] == ["main"]
    jobs = ci["jobs"]
    assert "ruff check" in run_text(jobs["lint"])
    # `make lint` (run by .ci/run) checks with the ruff the workflow pins.
    pinned = re.search(r'"ruff==([\d.]+)"', run_text(jobs["lint"]))
    made = re.search(r"^RUFF_VERSION := ([\d.]+)$", (REPO / "Makefile").read_text(), re.M)
    assert pinned and made and pinned[1] == made[1], (pinned, made)
    assert set(jobs["test"]["services"]) == {"postgres", "redis"}
    assert jobs["test"]["env"]["TASKFLOW_DATABASE_URL"].startswith("postgresql://")
    assert "make test" in run_text(jobs["test"])
    assert "make test-deploy" in run_text(jobs["deploy-checks"])
    assert "make test-image" in run_text(jobs["image"])
    assert ci["permissions"] == {"contents": "read"}


def test_release_pushes_a_multi_arch_image_and_the_chart_on_a_tag():
    release = load("release.yml")
    assert release["on"]["push"]["tags"]
    jobs = release["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert jobs["image"]["needs"] == "ci" and jobs["chart"]["needs"] == "image"
    assert jobs["image"]["permissions"]["packages"] == "write"
    build = next(s for s in steps(jobs["image"]) if s.get("id") == "build")
    assert build["uses"].startswith("docker/build-push-action@")
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True
    meta = next(s for s in steps(jobs["image"]) if s.get("id") == "meta")
    assert "ghcr.io/" in meta["with"]["images"]
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"]
    assert "type=sha" in meta["with"]["tags"]
    chart = run_text(jobs["chart"])
    assert "helm package helm/taskflow" in chart and "helm push" in chart
    assert "oci://ghcr.io/" in chart


def test_deploy_waits_for_approval_and_rollout():
    deploy = load("deploy.yml")
    assert "workflow_dispatch" in deploy["on"]
    assert deploy["on"]["workflow_run"]["workflows"] == ["release"]
    job = deploy["jobs"]["deploy"]
    assert "environment" in job  # required reviewers are a setting of the environment
    text = run_text(job)
    assert "helm upgrade --install" in text and "--wait" in text
    assert '--set image.tag="$VERSION"' in text
    assert "rollout status" in text
    for env in ("staging", "production"):
        assert (REPO / "deploy" / "values" / f"{env}.yaml").exists()


def test_hadolint_is_clean():
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info",
                             str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_mistake(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("needle", [
    "ARG BASE_IMAGE=", "AS build", "USER 10001", 'ENTRYPOINT ["dumb-init", "--", "taskflow"]',
    'CMD ["serve"]', "EXPOSE 8000 9101 9102", "org.opencontainers.image.source",
])
def test_the_dockerfile_has(needle: str):
    text = (REPO / "Dockerfile").read_text()
    assert needle in text
    assert "# syntax=" not in text  # a frontend image no registry here can serve
