"""Rendering shared by every role's pages: the layout, errors, and form helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from oncofed.client.cli_query import value_word
from oncofed.client.console.security import CSRF_FIELD, ConsoleKeys
from oncofed.kernel.errors import OncofedError, Param, render
from oncofed.tasks.tables import number

TEMPLATES = Path(__file__).parent / "templates"

NAVIGATION: dict[str, list[tuple[str, str]]] = {
    "hdab": [
        ("/", "Applications"),
        ("/permits", "Permits"),
        ("/audit", "Audit records"),
    ],
    "researcher": [
        ("/", "Applications"),
        ("/analyses", "Run an analysis"),
        ("/tasks", "Tasks"),
        ("/budget", "Privacy budget"),
    ],
    "operator": [
        ("/", "Node"),
        ("/datasets", "Datasets"),
        ("/approvals", "Approvals"),
        ("/budget", "Privacy budget"),
        ("/audit", "Audit trail"),
    ],
}
ROLE_TITLES = {"hdab": "data-access body", "researcher": "researcher", "operator": "node operator"}


def field_label(name: str) -> str:
    """A parameter's form label: ``time_points`` is "time points"."""
    return name.replace("_", " ")


def console_syntax(param: Param) -> str:
    """A parameter an error's fix suggests, as the form field that sets it."""
    label = f"\u201c{field_label(param.name)}\u201d"
    if not param.has_value:
        return f"the {label} field"
    value = param.value
    if value is True:
        return f"tick {label}"
    if value is False:
        return f"untick {label}"
    if isinstance(value, dict):
        lines = "; ".join(f"{value_word(k)}={value_word(v)}" for k, v in value.items())
        return f"{label}: {lines}"
    return f"{label}: {value_word(value)}"


@dataclass(frozen=True)
class ShownError:
    """An error as a page shows it: what happened, the rule, where, and the fix."""

    detail: str
    rule: str
    node: str
    fix: str
    kind: str


class Pages:
    def __init__(self, role: str, keys: ConsoleKeys) -> None:
        self.role = role
        self.keys = keys
        self.environment = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"])
        )
        self.environment.filters["number"] = number

    def error(self, exc: OncofedError) -> ShownError:
        return ShownError(
            detail=render(exc.raw_detail, console_syntax),
            rule=exc.rule,
            node=exc.node,
            fix=render(exc.raw_fix, console_syntax),
            kind=type(exc).__name__,
        )

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any] | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        page = self.environment.get_template(template).render(
            request=request,
            root=self.keys.root,
            path=request.url.path.removeprefix(self.keys.root) or "/",
            role=self.role,
            role_title=ROLE_TITLES[self.role],
            navigation=NAVIGATION[self.role],
            csrf_field=CSRF_FIELD,
            csrf=self.keys.csrf(),
            notice=request.query_params.get("notice", ""),
            **(context or {}),
        )
        return HTMLResponse(page, status_code=status)


def back_to(request: Request, path: str, notice: str = "") -> RedirectResponse:
    """After a form: go to the console's ``path`` (POST, redirect, GET), with a line saying
    what was done."""
    suffix = f"?{urlencode({'notice': notice})}" if notice else ""
    return RedirectResponse(request.scope.get("root_path", "") + path + suffix, status_code=303)


def form_text(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


__all__ = [
    "NAVIGATION",
    "Pages",
    "ShownError",
    "back_to",
    "console_syntax",
    "field_label",
    "form_text",
]
