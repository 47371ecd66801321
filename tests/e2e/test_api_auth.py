"""Bearer tokens against ``taskflow serve``: every way a token can be wrong, scopes,
tenancy, and RS256 tokens checked with keys from a JWKS URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from taskflow.api.scopes import ADMIN, READ, WRITE
from tests.e2e.api_stack import AUDIENCE, ISSUER, SECRET, Client, token

pytestmark = pytest.mark.slow

JOB = {"task": "noop", "queue": "parked"}


def assert_401(reply, words: str) -> None:
    assert reply.status == 401, reply
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["www-authenticate"].startswith('Bearer realm="taskflow"')
    assert words in reply.body["detail"], reply.body


async def test_no_token_is_401_with_a_challenge(client: Client):
    reply = await client.with_token(None).post("/tasks", json=JOB)
    assert_401(reply, "bearer token is required")
    basic = await client.with_token(None).get("/tasks", headers={"Authorization": "Basic eDp5"})
    assert_401(basic, "must be 'Bearer <jwt>'")


async def test_bad_signature_expired_wrong_audience_and_issuer_are_401(client: Client, tenant):
    cases = {
        "signature is invalid": token(tenant, key="another-secret-" + "y" * 32),
        "expired": token(tenant, ttl=-120),
        "audience": token(tenant, aud="someone-else"),
        "issuer": token(tenant, iss="https://evil.test"),
        "malformed": "not.a.jwt",
        "no 'tenant' claim": token(tenant, tenant=None),
        "not accepted": token(tenant, alg="HS512", key=SECRET * 2),
    }
    for words, bad in cases.items():
        reply = await client.with_token(bad).get("/tasks")
        assert_401(reply, words)
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]


async def test_not_yet_valid_token_is_401(client: Client, tenant):
    early = token(tenant, nbf=int(time.time()) + 600)
    assert_401(await client.with_token(early).get("/tasks"), "not yet valid")


async def test_missing_scope_is_403(client: Client, tenant):
    reader = client.with_token(token(tenant, [READ]))
    writer = client.with_token(token(tenant, [WRITE]))
    denied = await reader.post("/tasks", json=JOB)
    assert denied.status == 403 and "tasks:write" in denied.body["detail"]
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    job = await writer.post("/tasks", json=JOB)
    assert job.status == 201
    assert (await writer.get(f"/tasks/{job.body['id']}")).status == 403
    assert (await reader.get(f"/tasks/{job.body['id']}")).status == 200
    assert (await reader.post(f"/tasks/{job.body['id']}/cancel")).status == 403
    assert (await reader.post("/tasks/batch", json={"tasks": [JOB]})).status == 403


async def test_another_tenants_job_is_404_everywhere(client: Client, tenant):
    job = (await client.post("/tasks", json=JOB)).body
    intruder = client.with_token(token("intruder"))
    for method, path in [("GET", f"/tasks/{job['id']}"), ("GET", f"/tasks/{job['id']}/attempts"),
                         ("POST", f"/tasks/{job['id']}/cancel"),
                         ("POST", f"/tasks/{job['id']}/retry")]:
        reply = await intruder.call(method, path)
        assert reply.status == 404, (method, path, reply)
        assert reply.headers["content-type"] == "application/problem+json"
    assert job["id"] not in [j["id"] for j in (await intruder.get("/tasks")).body["items"]]
    assert (await intruder.get("/tasks", params={"tenant": tenant})).status == 403
    # Untouched by the attempts above.
    assert (await client.get(f"/tasks/{job['id']}")).body["state"] == "queued"


async def test_admin_reads_across_tenants_but_writes_only_its_own(client: Client, tenant):
    job = (await client.post("/tasks", json=JOB)).body
    admin = client.with_token(token("operators", [ADMIN]))
    assert (await admin.get(f"/tasks/{job['id']}")).body["tenant"] == tenant
    listed = await admin.get("/tasks", params={"tenant": tenant})
    assert [j["id"] for j in listed.body["items"]] == [job["id"]]
    assert (await admin.post(f"/tasks/{job['id']}/cancel")).status == 403  # no tasks:write
    operator = client.with_token(token("operators", [ADMIN, WRITE]))
    assert (await operator.post(f"/tasks/{job['id']}/cancel")).status == 404


async def test_rs256_token_verified_with_the_jwks(client: Client, jwks, tenant):
    signed = token(tenant, key=jwks.key, alg="RS256", headers={"kid": jwks.kid})
    rs = client.with_token(signed)
    created = await rs.post("/tasks", json=JOB)
    assert created.status == 201, created
    assert (await client.get(f"/tasks/{created.body['id']}")).status == 200  # same tenant
    unknown_kid = token(tenant, key=jwks.key, alg="RS256", headers={"kid": "rotated-away"})
    assert_401(await client.with_token(unknown_kid).get("/tasks"), "kid 'rotated-away'")
    from tests.e2e.api_stack import rsa_key

    forged = token(tenant, key=rsa_key(), alg="RS256", headers={"kid": jwks.kid})
    assert_401(await client.with_token(forged).get("/tasks"), "signature is invalid")
    # An RS256 token must not pass as HS256 signed with the public key (alg confusion).
    ec_key = ec.generate_private_key(ec.SECP256R1())
    es = token(tenant, key=ec_key, alg="ES256", headers={"kid": jwks.kid})
    assert_401(await client.with_token(es).get("/tasks"), "no key to verify a ES256 token")


def _raw_token(header: dict, claims: dict) -> str:
    """A token with any header at all, HS256-signed with the stack's secret."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (b64(json.dumps(header, ensure_ascii=False).encode()) + "."
                     + b64(json.dumps(claims).encode()))
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


@pytest.mark.parametrize("header", [
    {"alg": "\u2603"},                                  # not Latin-1
    {"alg": "HS256\u2028x"},                            # a line separator
    {"alg": "\u00e9" * 3000},                           # Latin-1, long
    {"alg": "RS256", "kid": "\u043a\u043b\u044e\u0447"},  # an unknown non-Latin-1 kid
    {"alg": "RS256", "kid": "k\r\nX-Injected: 1"},
    {"alg": "RS256", "kid": ["a", "list"]},             # not a string at all
    {"alg": "RS256", "kid": {"an": "object"}},
    {"alg": ["HS256"]},
], ids=["snowman-alg", "u2028-alg", "long-alg", "cyrillic-kid", "crlf-kid", "list-kid",
        "object-kid", "list-alg"])
async def test_any_header_value_gives_a_401_with_a_safe_challenge(client: Client, tenant,
                                                                  header):
    now = int(time.time())
    bad = _raw_token({"typ": "JWT", **header}, {"tenant": tenant, "exp": now + 60,
                                                "iss": ISSUER, "aud": AUDIENCE})
    reply = await client.with_token(bad).get("/tasks")
    assert reply.status == 401, reply
    assert reply.headers["content-type"] == "application/problem+json"
    challenge = reply.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="taskflow", error="invalid_token"'), challenge
    assert challenge.isascii() and challenge.isprintable() and len(challenge) < 400, challenge
    assert "X-Injected" not in reply.headers
    assert reply.body["status"] == 401 and len(reply.body["detail"]) < 400
