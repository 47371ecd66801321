"""Auth configuration as the real commands see it: a process not explicitly in
development refuses to start without an explicit way to verify tokens, names the
settings, and never generates a secret; HS256 is accepted only with a secret someone set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.api_stack import Client, Isolated, start_api, stop, token
from tests.e2e.processes import role_env

pytestmark = pytest.mark.slow


def _without_environment(iso: Isolated) -> dict[str, str]:
    return role_env(iso, TASKFLOW_ENV=None)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskflow.cli", *args], env=env,
                          capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("environment", [None, "production", "test"])
def test_serve_refuses_to_start_without_auth_settings(servers, tmp_path: Path, environment):
    iso = Isolated(servers, tmp_path)  # no database needed: it must stop before
    env = _without_environment(iso)
    if environment:
        env["TASKFLOW_ENV"] = environment
    try:
        done = _cli(env, "serve", "--port", "0")
    except subprocess.TimeoutExpired:
        pytest.fail("taskflow serve started without any auth configuration")
    assert done.returncode != 0
    assert "taskflow: configuration error: no way to verify tokens" in done.stderr
    assert "jwt_secret (TASKFLOW_JWT_SECRET)" in done.stderr and "auth.jwks_url" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "jwt-secret").exists()


async def test_serve_with_only_a_jwks_url_accepts_no_hs256_token(servers, tmp_path: Path,
                                                                 jwks, http, tenant):
    iso = Isolated(servers, tmp_path)
    await iso.create()
    api, url = await start_api(iso, tmp_path / "api.log", TASKFLOW_ENV=None,
                               TASKFLOW_AUTH__JWKS_URL=jwks.url)
    try:
        assert not (tmp_path / "jwt-secret").exists()
        # An HS256 token signed with anything at all, the would-be dev secret included.
        for secret in ("x" * 40, *_generated(tmp_path)):
            hs = Client(http, url, token(tenant, key=secret, iss=None, aud=None))
            reply = await hs.get("/tasks")
            assert reply.status == 401 and "no key to verify a HS256" in reply.body["detail"]
        rs = Client(http, url, token(tenant, key=jwks.key, alg="RS256", iss=None, aud=None,
                                     headers={"kid": jwks.kid}))
        assert (await rs.get("/tasks")).status == 200
    finally:
        stop(api)
        await iso.drop()


def _generated(folder: Path) -> list[str]:
    path = folder / "jwt-secret"
    return [path.read_text().strip()] if path.exists() else []


def test_token_uses_the_development_secret_only_in_development(servers, tmp_path: Path):
    iso = Isolated(servers, tmp_path)
    plain = _cli(_without_environment(iso), "token", "--tenant", "t1")
    assert plain.returncode != 0 and "TASKFLOW_JWT_SECRET" in plain.stderr
    assert not (tmp_path / "jwt-secret").exists()
    dev = _cli({**_without_environment(iso), "TASKFLOW_ENV": "development"},
               "token", "--tenant", "t1")
    assert dev.returncode == 0 and dev.stdout.count(".") == 2, dev.stderr
    assert (tmp_path / "jwt-secret").exists()
