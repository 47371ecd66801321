"""``POST /tasks`` without Litestar's layers: an ASGI wrapper in front of the app that
answers the plain successful single submit itself (issue 11).

Under a submit load Litestar's routing, middleware stack, signature parsing and response
building cost about as much CPU as the group commit itself. This path does only what a
plain submit needs, with the app's own parts: the :class:`TokenVerifier` (and its cache),
the same body type, :meth:`Submitter.new_job`, ``check_targets`` and ``submit_one``, the
same encoding and metrics.

The rule that keeps it identical to the route: anything unusual *before* the job is
handed to ``submit_one`` (no, bad or expired token, missing scope -- all checked before
the body is read, as the route does --, a query string other than a plain ``wait=S``
within ``api.max_wait``, another content type, no or too large ``Content-Length``, a body
that does not decode or validate, a job ``new_job`` refuses) goes to the Litestar app
unchanged, its body replayed, so every such answer is the route's own. Two refusals the
route would only repeat at a cost are answered here with the app's exception handlers:
the verifier's when the signing keys cannot be fetched (503), and a webhook
``check_targets`` refuses (422, after a DNS lookup). Once ``submit_one`` is called there
is no way back (the job may exist): its errors are answered the same way
(:mod:`taskflow.api.errors`). With ``wait=S`` it waits for the job's end as the route
does (``wait_for_submitted``: the same change feed, the same reads, dropped when the
client goes away).
"""

from __future__ import annotations

import re
import time

import msgspec
from litestar import Litestar
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from taskflow import logs
from taskflow.api.auth import WRITE, InvalidToken, Principal
from taskflow.api.context import ApiContext
from taskflow.api.controllers.tasks import wait_for_submitted
from taskflow.api.errors import exception_handler
from taskflow.api.schemas import JobSpec
from taskflow.models import NewJob

ROUTE = "/tasks"  # the path template Litestar gives the route (the metrics' label)
_JSON = frozenset({b"application/json", b"application/json; charset=utf-8"})
_WANTED = frozenset({b"authorization", b"content-type", b"content-length",
                     b"transfer-encoding"})
# The one query string served here; any other form (and a value the route refuses) is
# the route's to answer.
_WAIT = re.compile(rb"wait=([0-9]{1,5}(?:\.[0-9]{1,6})?)")


def asgi_app(app: Litestar) -> ASGIApp:
    """What the server runs: ``app`` behind the fast path, unless ``api.fast_submit`` is
    off."""
    api: ApiContext = app.state.api
    return FastSubmit(app) if api.settings.api.fast_submit else app


class FastSubmit:
    """ASGI app: ``POST /tasks`` when all is plain, everything else to ``app``.

    ``taskflow_api_fast_submits_total`` counts the submits it answered (``served``: the
    tests' proof that it did) and those it gave to the app (``handed_over``)."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.api: ApiContext = app.state.api
        self.max_body = self.api.settings.api.max_body_bytes
        self.max_wait = self.api.settings.api.max_wait
        self.decoder = msgspec.json.Decoder(JobSpec)
        self.encoder = msgspec.json.Encoder()
        self.served = self.api.metrics.fast_submits.labels("served")
        self.handed = self.api.metrics.fast_submits.labels("handed_over")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != ROUTE or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        found = _headers(scope)
        length = found.get(b"content-length") if found is not None else None
        seconds = self._wait(scope["query_string"])
        if (length is None or not length.isdigit() or int(length) > self.max_body
                or b"transfer-encoding" in found or found.get(b"content-type") not in _JSON
                or seconds == -1 or scope.get("root_path")):
            await self._hand_over(scope, receive, send)
            return
        # The token first, as the route does: a refused one is answered before the body
        # is read (no "100 Continue", no body of up to api.max_body_bytes buffered for a
        # client that may not submit).
        try:
            principal = await self._principal(found.get(b"authorization"))
        except Exception as exc:  # noqa: BLE001 - the key server: see _principal
            await self._refuse(scope, receive, send, exc, start)
            return
        if principal is None:
            await self._hand_over(scope, receive, send)
            return
        messages, body = await _body(receive, int(length))
        job = None if body is None else self._new_job(principal, body)
        if job is None:
            await self._hand_over(scope, _replay(messages, receive), send)
            return
        if job.notify is not None and job.notify.webhook is not None:
            try:
                await self.api.submitter.check_targets([job], [""])
            except Exception as exc:  # noqa: BLE001 - answered as the route would
                # Not handed over: the route would resolve the webhook's host again
                # (up to twice the resolver's timeout for one 422).
                await self._refuse(scope, receive, send, exc, start)
                return
        self.served.inc()
        status = 500
        try:
            try:
                # As in the route: no deadline around the write (see TaskController.submit).
                created, out = await self.api.submitter.submit_one(job)
                out = await wait_for_submitted(self.api, receive, out, seconds)
            except Exception as exc:  # noqa: BLE001 - answered as the app's handlers do
                status = await self._error(scope, receive, send, exc)
                return
            body = self.encoder.encode(out)
            status = 201 if created else 200
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            self.api.metrics.observe("POST", ROUTE, status, time.perf_counter() - start)

    def _wait(self, query: bytes) -> float | None:
        """Seconds to wait (None: no query string); -1 when the route should answer."""
        if not query:
            return None
        found = _WAIT.fullmatch(query)
        if found is None:
            return -1
        seconds = float(found[1])
        return seconds if 0 < seconds <= self.max_wait else -1

    async def _principal(self, authorization: bytes | None) -> Principal | None:
        """The caller, if the token is good and may write; None: the route answers."""
        if authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            principal = await self.api.verifier.verify(token)
        except InvalidToken:
            return None  # the route gives the answer, and counts it
        # Anything else (the keys of auth.jwks_url cannot be fetched: a 503) is raised and
        # answered here as the route would: handing over would make the route fetch the
        # keys again, doubling the wait and the load on the key server.
        logs.bind(tenant=principal.tenant)  # as JwtAuthMiddleware does, at once
        return principal if principal.may(WRITE) else None

    def _new_job(self, principal: Principal, body: bytes) -> NewJob | None:
        """The job to submit, or None when anything is unusual (the route answers)."""
        try:
            return self.api.submitter.new_job(self.decoder.decode(body), principal.tenant)
        except Exception:  # noqa: BLE001 - the route gives the answer, and counts it
            return None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: Exception,
                      start: float) -> None:
        """Answer ``exc``, raised by a check whose outcome the route would only repeat
        at a cost (a fetch of the signing keys, a DNS lookup), as the route would."""
        self.served.inc()
        status = 500
        try:
            status = await self._error(scope, receive, send, exc)
        finally:
            self.api.metrics.observe("POST", ROUTE, status, time.perf_counter() - start)

    async def _hand_over(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.handed.inc()
        await self.app(scope, receive, send)

    async def _error(self, scope: Scope, receive: Receive, send: Send,
                     exc: Exception) -> int:
        """Answer ``exc`` with the app's exception handler; returns the status."""
        request = self.app.request_class(scope=scope, receive=receive, send=send)
        response = exception_handler(exc)(request, exc)
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)
        return response.status_code


def _headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The headers the fast path reads; None if one of them is repeated."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            if name in found:
                return None
            found[name] = value
    return found


async def _body(receive: Receive, length: int) -> tuple[list[Message], bytes | None]:
    """The messages read and the body (None: the client went away, or sent more than
    ``length``, so the route answers)."""
    messages = [await receive()]
    if messages[0]["type"] == "http.request" and not messages[0].get("more_body", False):
        return messages, messages[0]["body"]  # nearly always: the body came in one piece
    size = 0
    while True:
        message = messages[-1]
        if message["type"] != "http.request":
            return messages, None
        size += len(message["body"])
        if size > length:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m["body"] for m in messages)
        messages.append(await receive())


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` giving ``messages``, already read, first."""
    pending = messages[::-1]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
