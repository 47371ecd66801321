"""Settings from AWS SSM Parameter Store, against a real moto server over HTTP with the
real boto3 client: the layer order (files, then SSM, then environment variables), typed
and nested values, paging, and a start that fails naming what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from taskflow.adapters.embedded import free_port
from taskflow.config import ConfigError, load_settings
from tests.aws import AWS_ENV, MOTO_SERVER, REGION, Moto, moto_server

boto3 = pytest.importorskip("boto3", reason="the aws extra is not installed")
pytestmark = pytest.mark.skipif(MOTO_SERVER is None, reason="moto[server] is not installed")

@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: Moto) -> Moto:
    for key in [k for k in os.environ if k.startswith(("TASKFLOW_", "AWS_"))]:
        monkeypatch.delenv(key)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TASKFLOW_SSM_REGION", REGION)
    monkeypatch.setenv("TASKFLOW_SSM_ENDPOINT_URL", moto.url)
    return moto


def _put(moto: Moto, prefix: str, params: dict[str, tuple[str, str]]) -> None:
    ssm = moto.client("ssm")
    for name, (kind, value) in params.items():
        ssm.put_parameter(Name=prefix + name, Type=kind, Value=value, Overwrite=True)


def test_layers_files_then_ssm_then_environment(aws_env: Moto, monkeypatch, tmp_path):
    prefix = "/taskflow/layers/"
    _put(aws_env, prefix, {
        "worker/concurrency": ("String", "22"),          # beats the file
        "worker/claim_batch": ("String", "300"),         # loses to the environment
        "queues": ("StringList", "default,emails,reports"),
        "worker/queues": ("StringList", "emails, reports"),
        "worker/lease_ttl": ("String", "12.5"),
        "api/group_commit": ("String", "false"),
        "auth/algorithms": ("String", '["RS256"]'),
        "jwt_secret": ("SecureString", "12345"),         # a secret stays text
        "task_policies/sendEmail/max_attempts": ("String", "9"),
    })
    extra = tmp_path / "production.yaml"
    extra.write_text("production:\n  worker:\n    concurrency: 11\n    shutdown_grace: 7\n"
                     "  api:\n    port: 9000\n")
    monkeypatch.setenv("TASKFLOW_SETTINGS_FILES", str(extra))
    monkeypatch.setenv("TASKFLOW_SSM_PATH", prefix)
    monkeypatch.setenv("TASKFLOW_WORKER__CLAIM_BATCH", "400")

    settings = load_settings(env="production")

    assert settings.worker.concurrency == 22
    assert settings.worker.claim_batch == 400
    assert settings.worker.shutdown_grace == 7 and settings.api.port == 9000  # file only
    assert settings.worker.queues == ("emails", "reports")
    assert settings.worker.lease_ttl == 12.5
    assert settings.api.group_commit is False
    assert settings.auth.algorithms == ("RS256",)
    assert settings.jwt_secret == "12345"
    assert settings.policy_for("sendEmail").max_attempts == 9
    assert settings.data_dir == "/var/lib/taskflow"  # settings.toml [production] still read


def test_ssm_path_can_come_from_a_file_and_every_page_is_read(aws_env: Moto, monkeypatch,
                                                              tmp_path):
    prefix = "/taskflow/paged"
    # More parameters than one GetParametersByPath page holds (10).
    _put(aws_env, prefix + "/", {f"task_policies/task{i:02d}/max_attempts": ("String", str(i))
                                 for i in range(1, 26)})
    extra = tmp_path / "ssm.toml"
    extra.write_text(f'[default]\nssm_path = "{prefix}"\n')
    monkeypatch.setenv("TASKFLOW_SETTINGS_FILES", str(extra))

    settings = load_settings()

    assert {name: p.max_attempts for name, p in settings.task_policies.items()
            if name.startswith("task")} == {f"task{i:02d}": i for i in range(1, 26)}


def test_a_bad_value_from_ssm_names_the_key(aws_env: Moto, monkeypatch):
    _put(aws_env, "/taskflow/bad/", {"worker/concurrency": ("String", "many")})
    monkeypatch.setenv("TASKFLOW_SSM_PATH", "/taskflow/bad/")
    with pytest.raises(ConfigError, match="'worker.concurrency'"):
        load_settings()


def test_a_path_with_no_parameters_fails_naming_it(aws_env: Moto, monkeypatch):
    monkeypatch.setenv("TASKFLOW_SSM_PATH", "/taskflow/nothing-here/")
    with pytest.raises(ConfigError, match="SSM path /taskflow/nothing-here/: no parameters"):
        load_settings()


def test_an_unreachable_endpoint_fails_naming_it(aws_env: Moto, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TASKFLOW_SSM_PATH", "/taskflow/prod/")
    monkeypatch.setenv("TASKFLOW_SSM_ENDPOINT_URL", closed)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "SSM path /taskflow/prod/" in str(info.value)
    assert f"cannot reach {closed}" in str(info.value)
    assert time.monotonic() - started < 30  # bounded retries, no hanging start


def test_denied_access_fails_naming_the_path(monkeypatch, tmp_path, aws_env):
    """A moto server that enforces IAM (after the setup calls): the caller's user may only
    read another path, so GetParametersByPath is denied."""
    setup_calls = 4
    with moto_server(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT=str(setup_calls)) as strict:
        strict.client("ssm").put_parameter(Name="/taskflow/secret/x", Value="1", Type="String")
        iam = strict.client("iam")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="other-path", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "ssm:GetParametersByPath",
                           "Resource": "arn:aws:ssm:*:*:parameter/elsewhere/*"}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setenv("TASKFLOW_SSM_ENDPOINT_URL", strict.url)
        monkeypatch.setenv("TASKFLOW_SSM_PATH", "/taskflow/secret/")
        with pytest.raises(ConfigError) as info:
            load_settings()
        assert "SSM path /taskflow/secret/" in str(info.value)
        assert "not authorized to perform: ssm:GetParametersByPath" in str(info.value)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TASKFLOW_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "taskflow.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_the_cli_takes_its_secret_from_ssm_and_refuses_to_start_without_it(moto: Moto):
    _put(moto, "/taskflow/cli/", {"jwt_secret": ("SecureString", "from-ssm-" + "x" * 32)})
    env = {**AWS_ENV, "TASKFLOW_ENV": "production", "TASKFLOW_SSM_REGION": REGION,
           "TASKFLOW_SSM_ENDPOINT_URL": moto.url}

    minted = _cli("token", "--tenant", "acme", env={**env, "TASKFLOW_SSM_PATH": "/taskflow/cli/"})
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip(), "from-ssm-" + "x" * 32, algorithms=["HS256"])
    assert claims["tenant"] == "acme"

    missing = _cli("serve", env={**env, "TASKFLOW_SSM_PATH": "/taskflow/typo/",
                                 "TASKFLOW_DATABASE_URL": "postgresql://127.0.0.1:1/x",
                                 "TASKFLOW_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert missing.returncode != 0
    assert ("taskflow: configuration error: SSM path /taskflow/typo/: no parameters"
            in missing.stderr)


def test_the_example_production_settings_file_loads_with_its_parameters(aws_env: Moto,
                                                                         monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    _put(aws_env, "/taskflow/prod/", {
        "database_url": ("SecureString", "postgresql://taskflow:s3cret@db.internal/taskflow"),
        "jwt_secret": ("SecureString", "prod-secret"),
        "worker/concurrency": ("String", "200"),
    })
    monkeypatch.setenv("TASKFLOW_SETTINGS_FILES", str(repo / "deploy/settings.production.yaml"))
    settings = load_settings(env="production")
    assert settings.ssm_path == "/taskflow/prod/"
    assert settings.database_url == "postgresql://taskflow:s3cret@db.internal/taskflow"
    assert settings.jwt_secret == "prod-secret"
    assert settings.worker.concurrency == 200  # SSM beats the file's 100
    assert settings.retry.max_attempts == 5  # from the file
    assert settings.auth.jwks_url == "https://auth.example.com/.well-known/jwks.json"
