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
