"""Token verification without a server: algorithms, keys, claims, the verified-token
cache, and the settings that must be present."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from taskflow.api.auth import InvalidToken, TokenVerifier, mint_token
from taskflow.api.scopes import ADMIN, READ, WRITE
from taskflow.config import AuthSettings, ConfigError

SECRET = "unit-secret-" + "z" * 32


def claims(**extra):
    now = int(time.time())
    return {"tenant": "acme", "sub": "u1", "scope": "tasks:read", "exp": now + 60, **extra}


async def test_minted_token_round_trips_with_issuer_and_audience():
    auth = AuthSettings(issuer="iss", audience="aud")
    verifier = TokenVerifier(auth, SECRET)
    token = mint_token(SECRET, auth, tenant="acme", subject="cli", scopes=[READ, WRITE],
                       ttl=60)
    principal = await verifier.verify(token)
    assert principal.tenant == "acme" and principal.subject == "cli"
    assert principal.scopes == {READ, WRITE} and not principal.is_admin
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "aud"


async def test_es256_token_checked_with_a_configured_pem_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    verifier = TokenVerifier(AuthSettings(public_keys=(str(path),)), "")
    principal = await verifier.verify(jwt.encode(claims(scope=[ADMIN]), key, "ES256"))
    assert principal.is_admin and principal.may(READ) and not principal.may(WRITE)
    with pytest.raises(InvalidToken, match="no key to verify a HS256"):
        await verifier.verify(jwt.encode(claims(), SECRET, "HS256"))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidToken, match="signature is invalid"):
        await verifier.verify(jwt.encode(claims(), other, "ES256"))


async def test_configured_tenant_claim_and_scope_forms():
    verifier = TokenVerifier(AuthSettings(tenant_claim="org"), SECRET)
    p = await verifier.verify(jwt.encode(claims(org="o1", scope=None, scp=[WRITE]), SECRET))
    assert p.tenant == "o1" and p.scopes == {WRITE}
    with pytest.raises(InvalidToken, match="no 'org' claim"):
        await verifier.verify(jwt.encode(claims(), SECRET))
    with pytest.raises(InvalidToken, match="scope"):
        await verifier.verify(jwt.encode(claims(org="o1", scope=7), SECRET))
    with pytest.raises(InvalidToken, match="exp"):
        await verifier.verify(jwt.encode({"org": "o1"}, SECRET))
    # Tenants PostgreSQL could not store: the token is refused (a 401), not the request
    # it reaches (a 422 about an unencodable value).
    for tenant in ("a\x00b", "a\ud800"):
        with pytest.raises(InvalidToken, match="not a tenant name"):
            await verifier.verify(jwt.encode(claims(org=tenant), SECRET))


async def test_time_claims_beyond_a_float_are_the_ends_of_time():
    # Signed and valid to PyJWT, which compares integers: caching them raised an
    # OverflowError (a 500 on every request with such a token).
    verifier = TokenVerifier(AuthSettings(), SECRET)
    token = jwt.encode(claims(exp=10**400, nbf=-(10**400)), SECRET)
    first = await verifier.verify(token)
    assert first.tenant == "acme" and await verifier.verify(token) is first  # cached


async def test_cached_token_still_expires():
    verifier = TokenVerifier(AuthSettings(leeway=0), SECRET)
    token = jwt.encode(claims(exp=time.time() + 1.2), SECRET)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first  # from the cache
    time.sleep(1.3)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


def test_settings_without_a_way_to_verify_or_with_a_short_secret_fail():
    with pytest.raises(ConfigError, match="no way to verify tokens"):
        TokenVerifier(AuthSettings(), "")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        TokenVerifier(AuthSettings(), "short")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        TokenVerifier(AuthSettings(public_keys=("-----BEGIN PUBLIC KEY-----\nnope",)), "")


@pytest.fixture
def bare_environment(monkeypatch, tmp_path):
    """No TASKFLOW_* variables but a data_dir of the test's own."""
    import os

    for name in [n for n in os.environ if n.startswith("TASKFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TASKFLOW_DATA_DIR", str(tmp_path))
    return tmp_path


async def test_without_an_explicit_environment_hs256_needs_a_set_secret(bare_environment,
                                                                        monkeypatch):
    """Only a JWKS URL configured and no environment named: no secret is generated, so an
    HS256 token (signed with anything) is refused."""
    from taskflow.api.auth import resolve_jwt_secret
    from taskflow.config import load_settings

    monkeypatch.setenv("TASKFLOW_AUTH__JWKS_URL", "http://127.0.0.1:1/jwks.json")
    settings = load_settings()
    assert resolve_jwt_secret(settings) == ""
    assert not (bare_environment / "jwt-secret").exists()
    verifier = TokenVerifier(settings.auth, resolve_jwt_secret(settings))
    with pytest.raises(InvalidToken, match="no key to verify a HS256 token"):
        await verifier.verify(jwt.encode(claims(), SECRET, "HS256"))


def test_a_process_not_in_development_needs_explicit_auth(bare_environment, monkeypatch):
    from taskflow.api.auth import check_auth_settings
    from taskflow.config import load_settings

    for env in (None, "production", "test"):
        settings = load_settings(env=env)
        with pytest.raises(ConfigError, match=r"set jwt_secret \(TASKFLOW_JWT_SECRET\), "
                                              "auth.public_keys or auth.jwks_url"):
            check_auth_settings(settings)
    assert not (bare_environment / "jwt-secret").exists()
    monkeypatch.setenv("TASKFLOW_JWT_SECRET", SECRET)
    check_auth_settings(load_settings(env="production"))
    # Asking for a generated secret outside development is an error, not a secret.
    monkeypatch.delenv("TASKFLOW_JWT_SECRET")
    monkeypatch.setenv("TASKFLOW_AUTH__GENERATE_DEV_SECRET", "true")
    with pytest.raises(ConfigError, match="auth.generate_dev_secret is for the development"):
        check_auth_settings(load_settings(env="production"))


def test_development_named_explicitly_generates_and_keeps_a_secret(bare_environment,
                                                                   monkeypatch):
    from taskflow.api.auth import check_auth_settings, resolve_jwt_secret
    from taskflow.config import load_settings

    by_dev = load_settings(default_env="development")  # what `taskflow dev` asks for
    assert by_dev.environment == "development"
    check_auth_settings(by_dev)
    secret = resolve_jwt_secret(by_dev)
    assert len(secret) >= 32 and (bare_environment / "jwt-secret").exists()
    monkeypatch.setenv("TASKFLOW_ENV", "development")  # `taskflow token` next to it
    assert resolve_jwt_secret(load_settings()) == secret
    monkeypatch.setenv("TASKFLOW_ENV", "production")  # TASKFLOW_ENV wins over the default
    assert load_settings(default_env="development").environment == "production"
