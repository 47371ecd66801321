"""Bearer JWT authentication, scopes and tenancy.

HS256 tokens are checked with ``jwt_secret``; RS256/ES256 tokens with the configured
public keys or the keys of a JWKS URL (fetched with aiohttp, cached, refetched when a
token names an unknown ``kid``). A verified token is remembered until it expires, so a
client that sends the same token again costs a dictionary lookup -- or, for a token a
JWKS key verified, until that key leaves the published set (see
``TokenVerifier._still_published``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from taskflow import logs, metrics
from taskflow.api.errors import ApiError, Unavailable
from taskflow.api.scopes import ADMIN, READ, SUBSCRIPTIONS, WRITE
from taskflow.config import AuthSettings, ConfigError, Settings

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32

__all__ = ["ADMIN", "READ", "WRITE", "Principal", "TokenVerifier", "JwtAuthMiddleware",
           "mint_token", "resolve_jwt_secret", "check_auth_settings"]


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the tenant that owns what they create, and what they may do."""

    tenant: str
    subject: str | None
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def may(self, scope: str) -> bool:
        # admin is the operator's cross-tenant view: it includes reading, and managing
        # subscriptions.
        return scope in self.scopes or (scope in (READ, SUBSCRIPTIONS) and self.is_admin)


class InvalidToken(ApiError):
    """401 with the ``WWW-Authenticate`` challenge of RFC 6750."""

    def __init__(self, detail: str, *, error: str | None = "invalid_token",
                 reason: str = "invalid") -> None:
        self.reason = reason  # the metrics' auth failure reason (a fixed set, see below)
        challenge = 'Bearer realm="taskflow"'
        if error:
            challenge += f', error="{error}", error_description="{_challenge_text(detail)}"'
        super().__init__(401, detail, headers={"WWW-Authenticate": challenge})


def _challenge_text(detail: str, limit: int = 200) -> str:
    """``detail`` as RFC 6750 allows in ``error_description`` (printable ASCII without
    ``"`` or ``\\``): a token's header values are echoed in details, and a header must
    not carry what HTTP cannot encode or what would end the quoted string."""
    text = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in detail)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shown(value: Any, limit: int = 60) -> str:
    """A token's header value quoted for a message, cut short: the caller chose it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


class MissingScope(ApiError):
    def __init__(self, scope: str) -> None:
        super().__init__(
            403, f"this token lacks the scope {scope!r}",
            headers={"WWW-Authenticate":
                     f'Bearer realm="taskflow", error="insufficient_scope", scope="{scope}"'},
        )


def resolve_jwt_secret(settings: Settings) -> str:
    """``jwt_secret``, or in the development environment (``auth.generate_dev_secret``) a
    random secret generated once and kept in ``data_dir/jwt-secret``. Empty when neither
    applies: outside development HS256 needs a secret someone set."""
    if settings.jwt_secret:
        return settings.jwt_secret
    if not settings.auth.generate_dev_secret:
        return ""
    if settings.environment != "development":
        raise ConfigError(
            "auth.generate_dev_secret is for the development environment only "
            f"(TASKFLOW_ENV=development; this process: {_environment(settings)}); "
            "set jwt_secret (TASKFLOW_JWT_SECRET) instead")
    path = Path(settings.data_dir) / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def check_auth_settings(settings: Settings) -> None:
    """Fails with a :class:`ConfigError` naming the settings unless the API can verify
    tokens with keys someone configured (or, in development, the generated secret).
    The API's roles call it before they start anything."""
    auth = settings.auth
    secret = resolve_jwt_secret(settings)
    if not (secret or auth.public_keys or auth.jwks_url):
        raise ConfigError(
            "no way to verify tokens: set jwt_secret (TASKFLOW_JWT_SECRET), auth.public_keys "
            "or auth.jwks_url; only the development environment (TASKFLOW_ENV=development, "
            f"the default of `taskflow dev`) generates a secret (this process: "
            f"{_environment(settings)})")
    TokenVerifier(auth, secret, cache_size=0)  # the secret's length, the PEM keys


def _environment(settings: Settings) -> str:
    return settings.environment or "no environment chosen"


def mint_token(
    secret: str, auth: AuthSettings, *, tenant: str, subject: str, scopes: list[str],
    ttl: float,
) -> str:
    """An HS256 token for ``tenant`` (``taskflow token``, the dev token, the tests)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject, auth.tenant_claim: tenant, "scope": " ".join(scopes),
        "iat": now, "nbf": now, "exp": now + int(ttl),
    }
    if auth.issuer:
        claims["iss"] = auth.issuer
    if auth.audience:
        claims["aud"] = auth.audience
    return jwt.encode(claims, secret, algorithm="HS256")


def _load_public_key(text_or_path: str) -> Any:
    text = text_or_path
    if "-----BEGIN" not in text:
        try:
            text = Path(text_or_path).read_text()
        except OSError as exc:
            raise ConfigError(f"auth.public_keys: cannot read {text_or_path!r}: {exc}") from None
    try:
        return load_pem_public_key(text.encode())
    except ValueError as exc:
        raise ConfigError(f"auth.public_keys: not a PEM public key: {exc}") from None


_KEY_TYPES = {"RS256": rsa.RSAPublicKey, "ES256": ec.EllipticCurvePublicKey}


class JwksCache:
    """The keys of a JWKS URL by ``kid``, refetched after ``ttl`` seconds or when asked
    for an unknown ``kid``: at most one fetch every ``min_refetch`` seconds, whether it
    succeeded or not. While the key server is down, requests are answered from the keys
    already fetched (an unknown ``kid`` is unknown), or with the 503 of the last failed
    fetch when there are none: an outage costs the key server one fetch per
    ``min_refetch``, not one per request, and no request waits out another's timeout.
    A request whose key is at hand never waits for a refetch (it runs in the background);
    one that needs it waits for the fetch under way, which its giving up does not end."""

    def __init__(self, url: str, ttl: float, min_refetch: float = 5.0) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refetch = min_refetch
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched = float("-inf")  # the last fetch that succeeded
        self._tried = float("-inf")  # the last fetch, when it ended
        self._failure: str | None = None  # why the last fetch failed
        # The fetch under way: its own task, so that a request that gives up (cancelled)
        # does not end it, and a request whose key is at hand need not wait for it.
        self._fetch: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def get(self, kid: str | None) -> list[jwt.PyJWK]:
        now = time.monotonic()
        if ((now - self._fetched > self.ttl or kid not in self.keys)
                and now - self._tried > self.min_refetch):
            fetch = self._start_fetch()
            at_hand = kid in self.keys if kid is not None else bool(self.keys)
            if not at_hand:
                await asyncio.shield(fetch)  # nothing to answer with meanwhile
        if not self.keys and self._failure is not None:
            raise Unavailable(self._failure)
        if kid is not None:
            return [self.keys[kid]] if kid in self.keys else []
        return list(self.keys.values())

    def _start_fetch(self) -> asyncio.Task[None]:
        """The fetch under way, or a new one (at most one at a time)."""
        if self._fetch is None or self._fetch.done():
            context = contextvars.copy_context()
            context.run(logs.bind, tenant=None)  # the cache's, not the caller's
            self._fetch = asyncio.create_task(self._refresh(), name="jwks-fetch",
                                              context=context)
        return self._fetch

    async def _refresh(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            async with self._session.get(self.url) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not a JWK set")
            keyset = jwt.PyJWKSet.from_dict(data)
            # A kid that is not a string names no token's key (and may not be hashable).
            keys = {k.key_id: k for k in keyset.keys
                    if k.key_id is None or isinstance(k.key_id, str)}
        except Exception as exc:  # noqa: BLE001 - whatever the key server sent: a failed fetch
            self._tried = time.monotonic()
            self._failure = f"cannot fetch signing keys from auth.jwks_url: {exc!r}"
            log.warning("%s; %s", self._failure,
                        f"serving the {len(self.keys)} keys fetched before" if self.keys
                        else "no keys to serve meanwhile")
            return
        self.keys = keys
        self._fetched = self._tried = time.monotonic()
        self._failure = None

    async def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


class TokenVerifier:
    """Turns a bearer token into a :class:`Principal`, or raises :class:`InvalidToken`."""

    def __init__(self, auth: AuthSettings, secret: str, cache_size: int = 10_000) -> None:
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes")
        self.auth = auth
        self.secret = secret
        self.public_keys = [_load_public_key(k) for k in auth.public_keys]
        self.jwks = JwksCache(auth.jwks_url, auth.jwks_cache_seconds) if auth.jwks_url else None
        if not (secret or self.public_keys or self.jwks):
            raise ConfigError("no way to verify tokens: set jwt_secret (TASKFLOW_JWT_SECRET), "
                              "auth.public_keys or auth.jwks_url")
        self.cache_size = cache_size
        # token -> (principal, nbf, exp, the JWKS key that verified it or None)
        self._cache: dict[str, tuple[Principal, float, float, jwt.PyJWK | None]] = {}
        self._options = {"require": ["exp"], "verify_aud": bool(auth.audience),
                         "verify_iss": bool(auth.issuer)}

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            principal, nbf, exp, jwk = cached
            now = time.time()
            if (nbf - self.auth.leeway <= now <= exp + self.auth.leeway
                    and (jwk is None or await self._still_published(jwk))):
                return principal
            del self._cache[token]
        claims, jwk = await self._decode(token)
        principal = self._principal(claims)
        if self.cache_size:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()  # simple bound; a cold cache only costs verification
            self._cache[token] = (principal, _moment(claims.get("nbf", 0)),
                                  _moment(claims["exp"]), jwk)
        return principal

    async def _still_published(self, jwk: jwt.PyJWK) -> bool:
        """Whether the JWKS key that verified a cached token is still the one the key
        server publishes under its kid (asking the cache refetches the set when it is
        stale): a key taken out of the set, revoked, stops its tokens within
        ``auth.jwks_cache_seconds``, not only when they expire. A refetched set holds new
        key objects, so its tokens are verified again once."""
        assert self.jwks is not None
        return any(k is jwk for k in await self.jwks.get(jwk.key_id))

    async def _decode(self, token: str) -> tuple[dict[str, Any], jwt.PyJWK | None]:
        """The token's claims, and the JWKS key that verified it (None: another key)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"malformed token: {exc}", reason="malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.auth.algorithms:
            raise InvalidToken(f"tokens signed with {_shown(alg)} are not accepted",
                               reason="algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token header's 'kid' must be a string", reason="malformed")
        keys = await self._keys(alg, kid)
        if not keys:
            raise InvalidToken(f"no key to verify a {alg} token"
                               + (f" with kid {_shown(kid)}" if kid else ""), reason="unknown_key")
        for i, (key, jwk) in enumerate(keys):
            try:
                return jwt.decode(
                    token, key, algorithms=[alg], audience=self.auth.audience or None,
                    issuer=self.auth.issuer or None, leeway=self.auth.leeway,
                    options=self._options,
                ), jwk
            except jwt.InvalidSignatureError:
                if i == len(keys) - 1:
                    raise InvalidToken("token signature is invalid", reason="signature") from None
            except jwt.ExpiredSignatureError:
                raise InvalidToken("token has expired", reason="expired") from None
            except jwt.InvalidAudienceError:
                raise InvalidToken(f"token audience is not {self.auth.audience!r}",
                                   reason="audience") from None
            except jwt.InvalidIssuerError:
                raise InvalidToken(f"token issuer is not {self.auth.issuer!r}",
                                   reason="issuer") from None
            except jwt.InvalidTokenError as exc:
                raise InvalidToken(f"invalid token: {exc}") from None
        raise AssertionError("unreachable")

    async def _keys(self, alg: str, kid: str | None) -> list[tuple[Any, jwt.PyJWK | None]]:
        """The keys that may verify the token, each with its JWKS entry (None: the secret
        or a configured public key)."""
        if alg == "HS256":
            return [(self.secret, None)] if self.secret else []
        wanted = _KEY_TYPES[alg]
        keys: list[tuple[Any, jwt.PyJWK | None]] = (
            [(k, None) for k in self.public_keys if isinstance(k, wanted)] if kid is None
            else [])
        if self.jwks is not None:
            keys += [(k.key, k) for k in await self.jwks.get(kid) if isinstance(k.key, wanted)]
        return keys

    def _principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self.auth.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise InvalidToken(f"token has no {self.auth.tenant_claim!r} claim (the tenant)",
                               reason="claims")
        if "\x00" in tenant or not tenant.isascii() and _unencodable(tenant):
            raise InvalidToken(f"token's {self.auth.tenant_claim!r} claim is not a tenant "
                               "name PostgreSQL can store (a NUL or a lone surrogate)",
                               reason="claims")
        raw = claims.get("scope") or claims.get("scp") or ()
        scopes = raw.split() if isinstance(raw, str) else raw
        if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
            raise InvalidToken("token 'scope' must be a space-separated string or a list",
                               reason="claims")
        sub = claims.get("sub")
        return Principal(tenant, sub if isinstance(sub, str) else None, frozenset(scopes))


def _moment(claim: Any) -> float:
    """A time claim PyJWT accepted, as a float: one beyond a float's range (an integer
    such as 10**400) is the start or end of time."""
    try:
        return float(claim)
    except OverflowError:
        return math.inf if claim > 0 else -math.inf


def _unencodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


class JwtAuthMiddleware(AbstractAuthenticationMiddleware):
    """Puts the caller's :class:`Principal` in ``request.auth`` (routes with
    ``opt={"exclude_from_auth": True}`` skip it)."""

    def __init__(self, app: Any, verifier: TokenVerifier, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.verifier = verifier

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise InvalidToken("a bearer token is required (Authorization: Bearer <jwt>)",
                               error=None, reason="missing")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("the Authorization header must be 'Bearer <jwt>'",
                               error="invalid_request", reason="malformed")
        principal = await self.verifier.verify(token.strip())
        logs.bind(tenant=principal.tenant)  # this request's task: its log records say whose
        # The scope a handler names in opt["scope"], checked here rather than by a Litestar
        # guard: Litestar copies the route handler for every guard call, which cost ~4 %
        # of the API's CPU under a POST /tasks load (py-spy).
        wanted = connection.scope["route_handler"].opt.get("scope")
        if wanted is not None and not principal.may(wanted):
            metrics.AUTH_FAILURES.labels("scope").inc()
            raise MissingScope(wanted)
        return AuthenticationResult(user=principal, auth=principal)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except InvalidToken as exc:
            metrics.AUTH_FAILURES.labels(exc.reason).inc()
            raise
