"""The Helm chart ``helm/taskflow``: ``helm lint --strict``, rendered with the default values
and the files in ``helm/taskflow/ci/``, every object validated against the Kubernetes
schemas of two versions, and what matters asserted on the objects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from taskflow.config import load_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "taskflow"
VALUES_FILES = ["default", "minimal", "production", "api-only"]
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
# Custom resources: no schema ships with kubernetes-validate; their shape is asserted below.
CRDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule")}
HOOK = "pre-install,pre-upgrade"


def values(name: str) -> dict[str, Any]:
    if name == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())


def render(vals: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    loaded = helm.Chart.load(chart)
    try:
        out = loaded.render(vals, name="tf", namespace="jobs", is_install=True)
    finally:
        loaded.close()
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.fixture(scope="module", params=VALUES_FILES)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(values(request.param))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict], kind: str, name: str) -> dict:
    [found] = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def containers(pod_owner: dict) -> list[dict]:
    spec = pod_owner["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- the tools ------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES_FILES)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_helm_lint_strict(name: str, kube: str):
    report = helm.lint(CHART, values(name), strict=True, kube_version=f"v{kube}",
                       namespace="jobs")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_object_is_valid_for_kubernetes(rendered, kube: str):
    name, docs = rendered
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is invalid for "
                        f"Kubernetes {kube}: {exc.message}")
    assert {"Deployment", "ConfigMap", "Service"} <= kinds


def test_the_kubernetes_validate_cli_agrees(tmp_path):
    """The same check as the command operators run, on one multi-document file."""
    import subprocess
    import sys

    docs = [d for d in render(values("production")) if (d["apiVersion"], d["kind"]) not in CRDS]
    manifest = tmp_path / "production.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    for kube in KUBE_VERSIONS:
        result = subprocess.run([str(cli), "-k", kube, "--strict", "--quiet", str(manifest)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    # And it does reject a mistake.
    broken = docs[0] | {"spec": {**docs[0].get("spec", {}), "replicaz": 2}} \
        if docs[0]["kind"] == "Deployment" else docs[0] | {"unexpected": True}
    manifest.write_text(yaml.safe_dump(broken))
    result = subprocess.run([str(cli), "-k", "1.33.0", "--strict", str(manifest)],
                            capture_output=True, text=True)
    assert result.returncode != 0


# -- what matters ---------------------------------------------------------------------


def test_one_image_for_every_role_and_the_hook(rendered):
    _, docs = rendered
    images = {c["image"] for d in docs if d["kind"] in {"Deployment", "Job"}
              for c in containers(d)}
    assert len(images) == 1, images


def test_the_roles_each_deployment_runs(rendered):
    name, docs = rendered
    roles = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
             for d in of_kind(docs, "Deployment")
             if d["metadata"]["labels"]["app.kubernetes.io/component"] != "worker"}
    workers = [d for d in of_kind(docs, "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"]
    expected = {
        "default": ({"api", "notifier"}, 1),
        "minimal": ({"api"}, 1),
        "production": ({"api", "notifier"}, 2),
        "api-only": ({"api"}, 0),
    }[name]
    assert (set(roles), len(workers)) == expected
    assert roles["api"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve"]
    if "notifier" in roles:
        assert roles["notifier"]["spec"]["template"]["spec"]["containers"][0]["args"] \
            == ["notify"]
    for worker in workers:
        assert worker["spec"]["template"]["spec"]["containers"][0]["args"][0] == "work"


def test_the_migration_hook_job_runs_taskflow_migrate(rendered):
    name, docs = rendered
    jobs = of_kind(docs, "Job")
    if name == "api-only":
        assert jobs == []
        return
    [job] = jobs
    assert job["metadata"]["annotations"]["helm.sh/hook"] == HOOK
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # What the Job needs exists before it: hook copies with a lower weight (or, for an
    # existing Secret, the operator's own).
    weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    pod = job["spec"]["template"]["spec"]
    config = by_name(docs, "ConfigMap", pod["volumes"][0]["configMap"]["name"])
    assert config["metadata"]["annotations"]["helm.sh/hook"] == HOOK
    assert int(config["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
    secret_refs = {v["secretKeyRef"]["name"] for v in env_of(container).values()
                   if isinstance(v, dict)}
    if name == "production":
        assert secret_refs == {"taskflow-prod"}
        assert not of_kind(docs, "Secret")
    else:
        [secret_name] = secret_refs
        secret = by_name(docs, "Secret", secret_name)
        assert secret["metadata"]["annotations"]["helm.sh/hook"] == HOOK
        assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
        assert "TASKFLOW_JWT_SECRET" not in env_of(container)  # migrate needs no secret
    account = pod["serviceAccountName"]
    sa = by_name(docs, "ServiceAccount", account)
    assert sa["metadata"]["annotations"]["helm.sh/hook"] == HOOK


def test_probes_point_at_real_endpoints_on_named_ports(rendered):
    from tests.deploy.routes import api_paths, worker_paths

    _, docs = rendered
    for deployment in of_kind(docs, "Deployment"):
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        paths = api_paths() if role == "api" else worker_paths()
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            if kind not in container:
                continue
            probe = container[kind]["httpGet"]
            assert probe["port"] in ports, (role, kind, probe)
            assert probe["path"] in paths, (role, kind, probe)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_restricted_pod_security_everywhere(rendered):
    _, docs = rendered
    for owner in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        pod = owner["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        tmp = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0]
        for container in containers(owner):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/etc/taskflow"} <= mounts
            assert container["resources"].get("requests"), container["name"]


def test_the_settings_configmap_is_a_file_taskflow_loads(rendered, tmp_path, monkeypatch):
    name, docs = rendered
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        volume = next(v for v in pod["volumes"] if v["name"] == "settings")
        config = by_name(docs, "ConfigMap", volume["configMap"]["name"])
        settings_file = tmp_path / "settings.yaml"
        settings_file.write_text(config["data"]["settings.yaml"])
        assert env["TASKFLOW_SETTINGS_FILES"] == "/etc/taskflow/settings.yaml"
        for key in [k for k in __import__("os").environ if k.startswith("TASKFLOW_")]:
            monkeypatch.delenv(key)
        settings = load_settings(
            files=[REPO / "settings.toml", settings_file], env=env["TASKFLOW_ENV"])
        # Every queue a pool serves is declared (taskflow refuses a worker otherwise).
        for worker in of_kind(docs, "Deployment"):
            args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
            served = [args[i + 1] for i, a in enumerate(args) if a == "--queue"]
            assert set(served) <= set(settings.queues), (served, settings.queues)
        if name == "production":
            assert set(settings.queues) == {"default", "reports", "emails"}
            assert settings.retry.max_attempts == 5
            assert settings.policy_for("sendEmail").max_attempts == 8
            assert env["TASKFLOW_SSM_PATH"] == "/taskflow/prod/"
            assert env["TASKFLOW_AUTH__JWKS_URL"].startswith("https://auth.example.com/")
        else:
            assert settings.retry.max_attempts == 3


def test_secrets_reach_the_roles_that_need_them(rendered):
    name, docs = rendered
    for deployment in of_kind(docs, "Deployment"):
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        refs = {k: v["secretKeyRef"] for k, v in env.items() if isinstance(v, dict)}
        assert {"TASKFLOW_DATABASE_URL", "TASKFLOW_REDIS_URL"} <= set(refs)
        # Each secret only where it is used.
        assert ("TASKFLOW_JWT_SECRET" in refs) == (role == "api")
        assert ("TASKFLOW_NOTIFY__SMTP__PASSWORD" in refs) == (role == "notifier")
        secret = {r["name"] for r in refs.values()}
        assert secret == ({"taskflow-prod"} if name == "production" else {"tf-taskflow"})
    if name != "production":
        secret = by_name(docs, "Secret", "tf-taskflow")
        if name != "default":
            assert set(secret["data"]) == {"database-url", "redis-url", "jwt-secret"}


def test_worker_pools_queues_concurrency_and_shutdown():
    docs = render(values("production"))
    pools = {d["metadata"]["labels"]["taskflow.io/pool"]: d for d in of_kind(docs, "Deployment")
             if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}
    assert set(pools) == {"default", "emails"}
    args = {n: d["spec"]["template"]["spec"]["containers"][0]["args"] for n, d in pools.items()}
    assert args["default"] == ["work", "--concurrency", "100", "--queue", "default",
                               "--queue", "reports"]
    assert args["emails"] == ["work", "--concurrency", "200", "--queue", "emails"]
    emails = pools["emails"]["spec"]["template"]["spec"]
    assert emails["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    assert env_of(emails["containers"][0])["TASKFLOW_WORKER__CLAIM_BATCH"] == "500"
    assert emails["terminationGracePeriodSeconds"] == 75  # grace 60 + 15 for the hand-back
    assert env_of(emails["containers"][0])["TASKFLOW_WORKER__SHUTDOWN_GRACE"] == "60"
    # Processes per pod: the pool's own, else the default (one, no supervisor).
    assert env_of(emails["containers"][0])["TASKFLOW_WORKER__PROCESSES"] == "2"
    assert env_of(pools["default"]["spec"]["template"]["spec"]["containers"][0])[
        "TASKFLOW_WORKER__PROCESSES"] == "1"
    # Topology spread selects the pool's own pods.
    [spread] = emails["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"]["taskflow.io/pool"] == "emails"
    # KEDA scales each pool on its own backlog; replicas are left to it.
    for pool, deployment in pools.items():
        assert "replicas" not in deployment["spec"]
        scaled = by_name(docs, "ScaledObject", deployment["metadata"]["name"])
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold"}
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
        assert 'set="ready"' in trigger["metadata"]["query"]
    assert by_name(docs, "ScaledObject", "tf-taskflow-worker-emails")["spec"][
        "maxReplicaCount"] == 50
    assert 'queue=~"default|reports"' in by_name(
        docs, "ScaledObject", "tf-taskflow-worker-default")["spec"]["triggers"][0][
        "metadata"]["query"]
    # PDBs select exactly the pool's pods.
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matching = [d for d in of_kind(docs, "Deployment")
                    if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matching) == 1, pdb["metadata"]["name"]


def test_production_api_ingress_tls_and_autoscaling():
    docs = render(values("production"))
    api = by_name(docs, "Deployment", "tf-taskflow-api")
    assert "replicas" not in api["spec"]  # the HPA owns it
    hpa = by_name(docs, "HorizontalPodAutoscaler", "tf-taskflow-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "tf-taskflow-api"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    ingress = by_name(docs, "Ingress", "tf-taskflow-api")
    assert ingress["spec"]["tls"] == [{"secretName": "taskflow-tls",
                                       "hosts": ["taskflow.example.com"]}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = by_name(docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # IRSA for SSM, on the roles' account and on the hook's copy.
    for sa in of_kind(docs, "ServiceAccount"):
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws")
    # Roles wait for the schema (the migrations' advisory lock) in an init container.
    [init] = api["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["migrate"]


def test_metrics_scraping_finds_every_role():
    docs = render(values("production"))
    [monitor] = of_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    scraped = set()
    for service in of_kind(docs, "Service"):
        if not selector.items() <= service["metadata"]["labels"].items():
            continue
        for port in service["spec"]["ports"]:
            if port["name"] in ports:
                scraped.add(service["metadata"]["labels"]["app.kubernetes.io/component"])
                # The port the Service names is one a selected pod declares.
                target = port["targetPort"]
                pods = [d for d in of_kind(docs, "Deployment") if service["spec"]["selector"]
                        .items() <= d["spec"]["template"]["metadata"]["labels"].items()]
                assert pods and all(target in {p["name"] for p in d["spec"]["template"]["spec"]
                                               ["containers"][0]["ports"]} for d in pods)
    assert scraped == {"api", "worker", "notifier"}
    policy = by_name(docs, "NetworkPolicy", "tf-taskflow")
    assert {p["ports"][0]["port"] for p in policy["spec"]["ingress"]} == {"http", "metrics"}


def test_dashboard_and_alert_rules_render_only_when_their_files_exist(tmp_path):
    enabled = {"metrics": {"prometheusRule": {"enabled": True},
                           "dashboard": {"enabled": True}}}
    # Without the files (a chart copied without them), nothing renders for them.
    bare = tmp_path / "taskflow"
    shutil.copytree(CHART, bare)
    shutil.rmtree(bare / "dashboards", ignore_errors=True)
    shutil.rmtree(bare / "alerts", ignore_errors=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(enabled, bare)}
    assert not any(k == "PrometheusRule" or n.endswith("-dashboard") for k, n in kinds)

    # The chart as shipped carries issue 8's dashboard and alert rules, rendered as they are.
    docs = render(enabled)
    config = by_name(docs, "ConfigMap", "tf-taskflow-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "taskflow.json").read_text())
    assert json.loads(config["data"]["taskflow.json"]) == shipped
    [rule] = of_kind(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(
        (CHART / "alerts" / "taskflow.rules.yaml").read_text())
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            kubernetes_validate.validate(doc, "1.33.0", strict=True)
    # Off by default even when the files are there.
    assert not of_kind(render({}), "PrometheusRule")


@pytest.mark.parametrize(("bad", "where"), [
    ({"workers": {"pools": [{"name": "x", "concurrency": 0}]}}, "/workers/pools/0/concurrency"),
    ({"workers": {"pools": [{"name": "Bad_Name"}]}}, "/workers/pools/0/name"),
    ({"workers": {"pools": [{"name": "x", "queues": []}]}}, "/workers/pools/0/queues"),
    ({"api": {"replicas": "two"}}, "/api/replicas"),
    ({"api": {"workers": -1}}, "/api/workers"),
    ({"workers": {"pools": [{"name": "x", "processes": "many"}]}},
     "/workers/pools/0/processes"),
    ({"api": {"replicaz": 2}}, "replicaz"),
    ({"secrets": {"databaseUrl": "mysql://x"}}, "/secrets/databaseUrl"),
    ({"ssm": {"path": "taskflow/prod"}}, "/ssm/path"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"typo": True}, "typo"),
])
def test_the_schema_rejects_wrong_values_at_install_time(bad, where):
    with pytest.raises(helm.HelmValuesError) as info:
        render(bad)
    assert where in str(info.value)


@pytest.mark.parametrize(("bad", "message"), [
    ({"secrets": {"create": True, "existingSecret": "x"}}, "are exclusive"),
    ({"workers": {"pools": [{"name": "a"}, {"name": "a"}]}}, "used twice"),
])
def test_contradictory_values_fail_with_a_message(bad, message):
    with pytest.raises(helm.HelmError) as info:
        render(bad)
    assert message in str(info.value)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_the_deploy_workflows_values_render_and_validate(environment: str):
    """deploy.yml installs with deploy/values/<environment>.yaml and the released tag."""
    vals = yaml.safe_load((REPO / "deploy" / "values" / f"{environment}.yaml").read_text())
    vals = vals | {"image": {**vals.get("image", {}), "tag": "1.2.3"}}
    report = helm.lint(CHART, vals, strict=True, namespace="taskflow")
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2]
    docs = render(vals)
    for kube in KUBE_VERSIONS:
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) not in CRDS:
                kubernetes_validate.validate(doc, kube, strict=True)
    images = {c["image"] for d in docs if d["kind"] in {"Deployment", "Job"}
              for c in containers(d)}
    assert images == {"ghcr.io/taskflow/taskflow:1.2.3"}
