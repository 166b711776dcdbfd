"""Who may use a running console: the person who started it, in their own browser.

The console binds 127.0.0.1 only, but any local program and any web page the
same person opens can reach 127.0.0.1. So, as Jupyter does, the address it
prints carries a one-time token; the first visit trades it for a session
cookie (HttpOnly, SameSite=Strict) and the token stops working. Every form
carries a CSRF token derived from that session, and a request naming another
host (DNS rebinding: a page of ``evil.example`` resolved to 127.0.0.1) is
refused before anything else runs.

Browsers send a cookie of 127.0.0.1 to every port of it, so a web server
another local user runs would receive the session cookie as soon as the
console's user opened one of its pages. The console therefore lives under a
random path (``ConsoleKeys.root``) and its cookie is limited to that path:
the browser sends it nowhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "oncofed_console"
CSRF_FIELD = "csrf"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
SAFE_METHODS = frozenset({"GET", "HEAD"})


class ConsoleKeys:
    """The token printed at start, and the session it is traded for (one browser)."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(32)
        self.root = "/" + secrets.token_urlsafe(12)
        self._session: str | None = None
        self._lock = threading.Lock()

    def redeem(self, token: str) -> str | None:
        """The new session secret for the right token, once; None ever after."""
        with self._lock:
            if self._session is not None or not _same(token, self.token):
                return None
            self._session = secrets.token_urlsafe(32)
            return self._session

    def session_ok(self, cookie: str | None) -> bool:
        return cookie is not None and self._session is not None and _same(cookie, self._session)

    def csrf(self) -> str:
        """The CSRF token of the session (forms carry it in a hidden field)."""
        assert self._session is not None, "pages are only rendered for a session"
        return hmac.new(self._session.encode(), b"csrf", hashlib.sha256).hexdigest()

    def csrf_ok(self, value: str) -> bool:
        return self._session is not None and _same(value, self.csrf())


# No framing (a page of another site cannot overlay "Sign and publish" and trick a click),
# no scripts, styles or images but the console's own, no address (with a task id or
# notice) sent on to other sites, and nothing cached: pages hold results and decisions.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return sending


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over a body already read, then the connection's own events."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of what a request sent (any text) with a secret."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def start_url(host: str, port: int, keys: ConsoleKeys) -> str:
    """What ``oncofed console`` prints: the address with its one-time token."""
    return f"http://{host}:{port}{keys.root}/?{urlencode({'token': keys.token})}"


class LocalOnly:
    """ASGI middleware: the host check, the token exchange, the session and CSRF checks."""

    def __init__(self, app: ASGIApp, keys: ConsoleKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = b"" if request.method in SAFE_METHODS else await request.body()
        refusal = await self._refusal(Request(scope, _replaying(body, receive)))
        if refusal is not None:
            await refusal(scope, receive, _with_headers(send))
            return
        await self.app(scope, _replaying(body, receive), _with_headers(send))

    async def _refusal(self, request: Request) -> Response | None:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in LOCAL_HOSTS:
            return PlainTextResponse(
                f"this console answers only to 127.0.0.1 or localhost, not {host!r}",
                status_code=421,
            )
        token = request.query_params.get("token")
        if token is not None:
            session = self.keys.redeem(token)
            if session is None:
                return PlainTextResponse(
                    "this console link has been used or is wrong. Open the console from the "
                    "browser you first used, or stop `oncofed console` and start it again for "
                    "a new link.",
                    status_code=403,
                )
            target = URL(str(request.url)).remove_query_params("token")
            response = RedirectResponse(target.path + (f"?{target.query}" if target.query else ""))
            response.set_cookie(
                SESSION_COOKIE, session, httponly=True, samesite="strict", path=self.keys.root
            )
            return response
        if not self.keys.session_ok(request.cookies.get(SESSION_COOKIE)):
            return PlainTextResponse(
                "open the console with the link `oncofed console` printed (it holds a "
                "one-time token)",
                status_code=403,
            )
        if request.method not in SAFE_METHODS:
            form = await request.form()
            if not self.keys.csrf_ok(str(form.get(CSRF_FIELD, ""))):
                return PlainTextResponse(
                    "this form did not come from this console's own page (CSRF token missing "
                    "or wrong); reload the page and send it again",
                    status_code=403,
                )
        return None


__all__ = ["CSRF_FIELD", "SESSION_COOKIE", "ConsoleKeys", "LocalOnly", "start_url"]
