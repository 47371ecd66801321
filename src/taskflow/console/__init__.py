"""The web console: static files under ``/ui`` (our own ES modules, the vendored
libraries in ``static/vendor/``), and ``/`` redirecting there.

The console is a client of the public API like any other: it holds a token in the
browser's session storage and sends it as a bearer header to the same origin. Its pages
are served without authentication (they hold no data) and with a Content-Security-Policy
that allows scripts, styles and requests from this origin only: no inline script or
style can run, even if an API value were ever rendered as markup.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from litestar import Response, Router, get, head
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

PATH = "/ui"

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    # No markup from strings anywhere (no innerHTML and the like): the browser enforces it.
    "require-trusted-types-for 'script'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the sign-in link's fragment is never sent; belt and braces
    "X-Frame-Options": "DENY",
    # Revalidate every time: a new release's files replace the old ones at once.
    "Cache-Control": "no-cache",
}


def static_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("static")))


async def _secure(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


@get("/", include_in_schema=False, sync_to_thread=False)
def _root() -> Redirect:
    return Redirect(f"{PATH}/")


@head("/", include_in_schema=False, sync_to_thread=False)
def _root_head() -> Response[None]:
    """As GET (uptime probes send HEAD)."""
    return Response(None, status_code=307, headers={"Location": f"{PATH}/"})


@head(f"{PATH}/", include_in_schema=False, sync_to_thread=False)
def _page_head() -> Response[None]:
    """As GET of the page without its body (the static router has no HEAD for it)."""
    return Response(None, media_type="text/html; charset=utf-8")


def console_routes() -> list[Router | object]:
    """The route handlers to add to the API's app."""
    return [create_static_files_router(path=PATH, directories=[static_dir()], html_mode=True,
                                       name="console", after_request=_secure),
            _root, _root_head, _page_head]


def signin_url(api_url: str, token: str) -> str:
    """A link that signs the console in with ``token``: in the fragment, which browsers
    never send to the server, so it appears in no access log; the console stores it in
    session storage and removes it from the address bar."""
    return f"{api_url}{PATH}/#token={token}"
