"""Forms made from declarations: a task's parameters, and a data access application.

A task's form has one field per parameter a researcher may set, in the shape
``oncofed query`` gives it (``client/cli_query.py``): the same text goes in
(``1,2`` for a list, ``epsilon=0.5,delta=1e-6`` for settings), one
``KEY=VALUE[,VALUE]`` per line for a mapping, and a yes/no choice for a flag.
A task added to ``tasks/`` has its form without a line here.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from oncofed.client.cli_query import Parameter, parameters, value_word
from oncofed.client.console.pages import field_label
from oncofed.governance.keys import IdentityCard
from oncofed.governance.permits import DataAccessApplication, DatasetRequest, Purpose
from oncofed.kernel.errors import ConfigError, format_validation_error
from oncofed.tasks.base import TaskType

FLAG_CHOICES = ("", "yes", "no")


@dataclass(frozen=True)
class FormField:
    """One input of a task's form."""

    name: str
    label: str
    hint: str
    kind: str  # "text", "textarea", "select"
    required: bool
    choices: tuple[str, ...] = ()
    placeholder: str = ""


def task_fields(task: TaskType[Any, Any]) -> list[FormField]:
    """The task's parameters as form inputs, its positional ones (what it is about) first."""
    ordered = sorted(parameters(task), key=lambda p: p.name not in task.arguments)
    return [_field(p) for p in ordered]


def _field(parameter: Parameter) -> FormField:
    hint = parameter.help()
    required = parameter.info.is_required()
    name, label = parameter.name, field_label(parameter.name)
    if parameter.shape == "flag":
        return FormField(name, label, hint, "select", False, FLAG_CHOICES)
    if parameter.shape == "choice":
        return FormField(name, label, hint, "select", required, ("", *parameter.choices))
    if parameter.shape == "mapping":
        return FormField(
            name, label, hint + " One per line.", "textarea", required, placeholder="KEY=V[,V]"
        )
    return FormField(name, label, hint, "text", required, placeholder=parameter.metavar() or "")


def task_request(task: TaskType[Any, Any], form: Any) -> dict[str, Any]:
    """The form's filled-in fields as ``Session.submit`` takes them (empty: the default)."""
    request: dict[str, Any] = {}
    for parameter in parameters(task):
        raw = form.get(parameter.name)
        text = raw.strip() if isinstance(raw, str) else ""
        if not text:
            continue
        if parameter.shape == "flag":
            request[parameter.name] = text == "yes"
        elif parameter.shape == "mapping":
            request[parameter.name] = parameter.value(
                tuple(line.strip() for line in text.splitlines() if line.strip())
            )
        else:
            request[parameter.name] = parameter.value(text)
    return request


def task_form_values(task: TaskType[Any, Any], params: dict[str, Any]) -> dict[str, str]:
    """``task_request``'s inverse: an earlier request as the form's text, to edit and rerun."""
    values: dict[str, str] = {}
    for parameter in parameters(task):
        if parameter.name not in params:
            continue
        value = params[parameter.name]
        if parameter.shape == "flag":
            values[parameter.name] = "yes" if value else "no"
        elif parameter.shape == "mapping":
            values[parameter.name] = "\n".join(f"{k}={value_word(v)}" for k, v in value.items())
        elif isinstance(value, dict):
            values[parameter.name] = ",".join(f"{k}={value_word(v)}" for k, v in value.items())
        else:
            values[parameter.name] = value_word(value)
    return values


def application_from_form(form: Any, applicant: IdentityCard) -> DataAccessApplication:
    """A data access application (one dataset) from the researcher's form, or one ConfigError."""

    def text(name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    def items(name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in text(name).split(",") if part.strip())

    epsilon = text("epsilon")
    try:
        return DataAccessApplication(
            applicant=applicant,
            organisation=text("organisation"),
            persons=(applicant,),
            purposes=tuple(Purpose(p) for p in form.getlist("purposes")),
            description=text("description"),
            datasets=(
                DatasetRequest(
                    dataset=text("dataset"),
                    variables=items("variables") or None,
                    epsilon=float(epsilon) if epsilon else None,
                    release="exact" if text("release") == "exact" else "dp",
                ),
            ),
            task_types=tuple(form.getlist("task_types")),
            access="pseudonymised" if text("access") == "pseudonymised" else "anonymised",
            period_start=datetime.date.fromisoformat(text("period_start")),
            period_end=datetime.date.fromisoformat(text("period_end")),
        )
    except ValidationError as exc:
        raise ConfigError(
            f"the application is incomplete: {format_validation_error(exc)}",
            rule="application.schema",
            fix="complete the fields named above and file it again",
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"the application is incomplete: {exc}",
            rule="application.schema",
            fix="give the period as dates and epsilon as a number, then file it again",
        ) from None


__all__ = [
    "FormField",
    "application_from_form",
    "task_fields",
    "task_form_values",
    "task_request",
]
