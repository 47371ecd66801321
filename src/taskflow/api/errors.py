"""Every error the API answers is a problem-details document (RFC 9457) with a message
naming the field and the rule; nothing a client sends yields a 500.

One rule for status codes: a body that is missing or not JSON is a 400; a body field or
query parameter that breaks a rule (wrong type, out of range, not one of the allowed
values, unknown, missing) is a 422 whose ``field`` names it as the client wrote it (a
JSON path such as ``backoff.factor``, or the parameter's name such as ``state``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from taskflow.api.schemas import Problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 500: "Internal Server Error",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """An error answered as problem details."""

    def __init__(
        self, status: int, detail: str, *, field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    def problem(self) -> Problem:
        return Problem(_TITLES.get(self.status, "Error"), self.status, self.detail,
                       field=self.field)


class Unavailable(ApiError):
    """PostgreSQL, Redis or a key server cannot be reached."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, detail, headers={"Retry-After": "1"})


_AT = re.compile(r"^(.*) - at (`key` in )?`\$(.*)`$", re.DOTALL)
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(.*)`$")


def located(error: msgspec.ValidationError, prefix: str = "") -> tuple[str, str]:
    """The JSON path a msgspec validation error is about ("" for the whole document),
    after ``prefix``, and its rule: "Expected `int` <= 1000 - at `$.priority`" gives
    ("priority", "Expected `int` <= 1000"). An unknown or missing field is named by its
    own path ("backoff.retries"), not by the object holding it."""
    text = str(error)
    path = ""
    match = _AT.match(text)
    if match:
        text, path = match.group(1), match.group(3).lstrip(".")
        if match.group(2):
            text = f"a key: {text}"
    named = _NAMED_FIELD.match(text)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    if prefix:
        path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
    return path, text


def invalid_body(exc: msgspec.ValidationError | msgspec.DecodeError) -> ApiError:
    """A 400 (not JSON) or 422 (JSON that breaks a rule) naming the field, from msgspec's
    message ("Expected `int` <= 1000 - at `$.priority`")."""
    if isinstance(exc, msgspec.ValidationError):
        path, rule = located(exc)
        if path:
            return ApiError(422, f"{path}: {rule}", field=path)
        return ApiError(422, rule)
    return ApiError(400, f"request body is not valid JSON: {exc}")


# Failures that mean a store is unreachable or overloaded, not that the request was wrong.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection the server closed under a statement ("cannot switch to state 12;
    # another operation is in progress"): PostgreSQL went away, not a client mistake.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def _response(problem: Problem, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        content=msgspec.json.encode(problem), status_code=problem.status,
        media_type=PROBLEM_JSON, headers=headers,
    )


def on_api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return _response(exc.problem(), exc.headers)


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own errors (no route, wrong method, bad query parameter, body too
    large) in the same shape."""
    if isinstance(exc, ValidationException):
        error = invalid_parameters(request, exc)
        return _response(error.problem(), {**(exc.headers or {}), **error.headers})
    status = exc.status_code
    detail = exc.detail or _TITLES.get(status, "Error")
    if status == 413:
        detail = "request body exceeds the configured limit (api.max_body_bytes)"
    return _response(Problem(_TITLES.get(status, "Error"), status, detail), exc.headers)


def invalid_parameters(request: Request[Any, Any, Any], exc: ValidationException) -> ApiError:
    """Litestar's checks of the parameters a handler declares: a value that breaks a rule
    is a 422 naming the parameter as the client wrote it (``state``, not the handler's
    ``job_state``). A body Litestar could not read at all (it decodes only a missing
    one; :class:`~taskflow.api.app.StrictRequest` decodes the rest) is a 400."""
    items = [i for i in exc.extra if isinstance(i, dict)] if isinstance(exc.extra, list) else []
    params = [i for i in items if i.get("key") and i.get("source") != "body"]
    if not params:
        return ApiError(400, "request body is missing or not valid JSON")
    names = [_parameter_name(request, str(i["key"])) for i in params]
    detail = "; ".join(f"{name}: {i.get('message')}" for name, i in zip(names, params))
    return ApiError(422, detail, field=names[0])


def _parameter_name(request: Request[Any, Any, Any], key: str) -> str:
    """The query (or header, cookie) name of the handler argument ``key``."""
    try:
        kwarg = request.route_handler.parsed_fn_signature.parameters[key].kwarg_definition
    except (AttributeError, KeyError):
        return key
    alias = (getattr(kwarg, "name", None) or getattr(kwarg, "query", None)
             or getattr(kwarg, "header", None) or getattr(kwarg, "cookie", None))
    return alias or key


# Transient conflicts between concurrent transactions: the request may simply be repeated.
CONFLICT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


def _unstorable(exc: asyncpg.DataError) -> str:
    text = str(exc)
    if "0x00" in text or "\\u0000" in text or "\x00" in text:
        return ("a text value in the request contains a NUL character (\\u0000), which "
                "PostgreSQL cannot store")
    if "out of range" in text:
        return "a time or number in the request is outside what PostgreSQL can store"
    return f"a value in the request cannot be stored ({type(exc).__name__})"


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, asyncpg.DataError):
        # A value PostgreSQL cannot store (a NUL character, say) that the request checks
        # did not catch: the client's input, so a 4xx, not a 500. Said in our words:
        # asyncpg's text shows the statement's arguments, the values of other fields too.
        log.info("%s %s: a value PostgreSQL refuses: %r", request.method, request.url.path,
                 exc)
        return _response(Problem("Unprocessable Content", 422, _unstorable(exc)))
    if isinstance(exc, CONFLICT_ERRORS):
        log.warning("%s %s: transaction conflict: %r", request.method, request.url.path, exc)
        return _response(Problem("Service Unavailable", 503,
                                 "the request collided with a concurrent one; repeat it"),
                         {"Retry-After": "0"})
    if isinstance(exc, BACKEND_ERRORS):
        log.warning("%s %s: backend unavailable: %r", request.method, request.url.path, exc)
        return _response(
            Problem("Service Unavailable", 503,
                    f"a backing store is unavailable ({type(exc).__name__}); retry later"),
            {"Retry-After": "1"},
        )
    log.exception("%s %s failed", request.method, request.url.path)
    return _response(Problem("Internal Server Error", 500, "internal error; see the logs"))


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}


def exception_handler(exc: Exception) -> Any:
    """The handler of :data:`EXCEPTION_HANDLERS` Litestar picks for ``exc`` (the first
    class of its MRO that has one): for code that answers outside Litestar's routing
    (:mod:`taskflow.api.fastpath`) in exactly the same way."""
    return next(EXCEPTION_HANDLERS[cls] for cls in type(exc).__mro__
                if cls in EXCEPTION_HANDLERS)
