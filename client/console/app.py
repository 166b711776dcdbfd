"""``oncofed console``: the web application, one role per running console.

A console runs on its user's own machine with their own credentials folder
(a data-access body's or a researcher's) or a node's config (an operator's),
and talks to the coordinator over the same mutual-TLS API as the command
line. Pages are rendered on the server (Jinja2); the only script polls a
running task's progress, and every page works without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from oncofed.client.console.pages import Pages
from oncofed.client.console.security import ConsoleKeys, LocalOnly
from oncofed.kernel.errors import OncofedError

ConsoleRole = Literal["hdab", "researcher", "operator"]
HERE = Path(__file__).parent


@dataclass(frozen=True)
class ConsoleSettings:
    """What one console serves, and for whom."""

    role: ConsoleRole
    state_dir: Path
    """The console's own files (the tasks it submitted, their results); nothing secret."""
    credentials: Path | None = None
    coordinator: str = "127.0.0.1:7100"
    node_config: Path | None = None


RoleRoutes = Callable[[ConsoleSettings, Pages], Sequence[BaseRoute]]


def _routes_of(role: ConsoleRole) -> RoleRoutes:
    if role == "hdab":
        from oncofed.client.console.body import routes
    elif role == "researcher":
        from oncofed.client.console.researcher import routes
    else:
        from oncofed.client.console.operator import routes
    return routes


def create_app(settings: ConsoleSettings, keys: ConsoleKeys) -> LocalOnly:
    """The console's ASGI application, behind its host, token and CSRF checks."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pages = Pages(settings.role, keys)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OncofedError)
        return pages.render(request, "error.html", {"error": pages.error(exc)}, status=400)

    async def not_found(request: Request, exc: Exception) -> Response:
        return pages.render(request, "error.html", {"missing": request.url.path}, status=404)

    routes = [
        *_routes_of(settings.role)(settings, pages),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=[Mount(keys.root, routes=routes)],
        exception_handlers={OncofedError: refused, 404: not_found},
    )
    return LocalOnly(app, keys)


__all__ = ["ConsoleRole", "ConsoleSettings", "create_app"]
