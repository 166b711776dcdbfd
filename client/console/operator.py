"""The node operator's pages: the node and its connection, its data, the tasks waiting
for the operator's approval, the privacy budgets spent, and the audit trail.

The console reads the node's config and state folder on this machine, as
``oncofed node check``, ``node approvals``, ``node budget`` and ``audit
verify`` do (``node/local_state.py`` holds what they share); it needs no
connection to the coordinator and works whether the node runs or not. The
config is read again for every page, so an edit shows without a restart.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from oncofed.client.console.app import ConsoleSettings
from oncofed.client.console.pages import Pages, ShownError, back_to, form_text
from oncofed.governance.audit import AuditEntry
from oncofed.kernel.errors import OncofedError
from oncofed.node.config import NodeConfig, load_node_config
from oncofed.node.config_check import check_credentials, check_state_dir
from oncofed.node.governance_state import Approval, GovernanceState
from oncofed.node.local_state import (
    DatasetFacts,
    budget_rows,
    dataset_facts,
    decide_approval,
    node_audit_trail,
)
from oncofed.node.status import STALE_HEARTBEATS, NodeStatus, Verdict, is_running, judge
from oncofed.node.status import read_status as read_node_status

T = TypeVar("T")

RECENT_ENTRIES = 50
"""Audit entries the audit page lists, newest first (``oncofed audit export`` has them all)."""


def utc(moment: float | None) -> str:
    """A Unix time as the pages write it (UTC, to the second); "-" for none."""
    if moment is None:
        return "-"
    return f"{datetime.datetime.fromtimestamp(moment, datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"


def ago(moment: float, now: float) -> str:
    """How long ago, in the largest whole unit: "12 s ago", "5 min ago", "3 h ago"."""
    seconds = max(0, round(now - moment))
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@dataclass(frozen=True)
class StatusView:
    """The node process as the node page says it: a short verdict and the sentence under it."""

    verdict: Verdict
    running: bool
    connected: bool
    headline: str
    explanation: str
    status: NodeStatus | None
    since: str
    last_heartbeat: str


def status_view(config: NodeConfig, config_path: Path, now: float) -> StatusView:
    status = read_node_status(config.state_dir)
    verdict = judge(status, now)
    start = f"start it with `oncofed node start {config_path}`"
    if status is None:
        return StatusView(
            verdict,
            running=False,
            connected=False,
            headline="Not known",
            explanation=f"the node has written no status in {config.state_dir}: it has not "
            f"run with this state folder since it was installed or upgraded; {start}",
            status=None,
            since="-",
            last_heartbeat="-",
        )
    since = f"{utc(status.since)} ({ago(status.since, now)})"
    beat = (
        f"{utc(status.last_heartbeat)} ({ago(status.last_heartbeat, now)})"
        if status.last_heartbeat is not None
        else "none yet"
    )
    headline, explanation = {
        "connected": (
            "Running, connected",
            f"process {status.pid} is connected to the coordinator at {status.coordinator}",
        ),
        "connecting": (
            "Running, not connected yet",
            f"process {status.pid} is trying to reach the coordinator at {status.coordinator}",
        ),
        "disconnected": (
            "Running, disconnected",
            f"process {status.pid} lost its connection to {status.coordinator} and is reconnecting",
        ),
        "stopped": ("Not running", f"the node stopped; {start}"),
        "ended": (
            "Not running",
            f"process {status.pid} ended without stopping (it crashed or was killed) while "
            f"{status.state}; its log says why. Then {start}",
        ),
        "not responding": (
            "Not responding",
            f"process {status.pid} exists but has sent no heartbeat for more than "
            f"{STALE_HEARTBEATS} heartbeat intervals of {status.heartbeat_seconds:g} s: it "
            "may be frozen or overloaded; see its log, and restart it if it stays so",
        ),
        "unknown": ("Not known", ""),
    }[verdict]
    return StatusView(
        verdict,
        running=is_running(verdict),
        connected=verdict == "connected",
        headline=headline,
        explanation=explanation,
        status=status,
        since=since,
        last_heartbeat=beat,
    )


def _policy_view(config: NodeConfig) -> dict[str, Any]:
    """Each dataset's release mode, budget and approval mode, and the disclosure rules."""
    datasets = []
    for name, dataset in config.datasets.items():
        privacy = config.policy.privacy_for(name)
        datasets.append(
            {
                "name": name,
                "release": "exact where a permit grants it, else DP"
                if privacy.allow_exact
                else "differential privacy only",
                "epsilon": privacy.epsilon,
                "researcher_epsilon": privacy.lifetime_epsilon,
                "delta": privacy.delta,
                "max_epsilon_per_release": privacy.max_epsilon_per_release,
                "approval": "each task waits for the operator"
                if dataset.approval == "manual"
                else "automatic",
                "allowed_tasks": ", ".join(dataset.allowed_tasks)
                if dataset.allowed_tasks is not None
                else "every installed task",
            }
        )
    fields = type(config.policy).model_fields
    rules = [
        {"name": name, "value": getattr(config.policy, name), "meaning": field.description or ""}
        for name, field in fields.items()
        if name != "dp"
    ]
    return {"datasets": datasets, "rules": rules}


@dataclass(frozen=True)
class ApprovalView:
    approval: Approval
    requested: str
    decided: str
    parameters: str


def _approval_view(approval: Approval) -> ApprovalView:
    try:
        parameters = json.dumps(json.loads(approval.params_json), indent=1, sort_keys=True)
    except ValueError:
        parameters = approval.params_json
    return ApprovalView(approval, utc(approval.requested_at), utc(approval.decided_at), parameters)


def routes(settings: ConsoleSettings, pages: Pages) -> Sequence[BaseRoute]:
    assert settings.node_config is not None, "an operator's console runs with a node config"
    config_path = settings.node_config
    # One engine per state file for the console's life (GovernanceState has no close).
    states: dict[Path, GovernanceState] = {}

    def governance(config: NodeConfig) -> GovernanceState:
        if config.state_dir not in states:  # two first requests at once: one engine is unused
            states[config.state_dir] = GovernanceState.at(config.state_dir)
        return states[config.state_dir]

    def shown(action: Callable[[], T]) -> tuple[T | None, ShownError | None]:
        """What ``action`` returns, or the typed error it raised as a page shows it: one
        section's problem (bad credentials, a broken data file) leaves the rest readable."""
        try:
            return action(), None
        except OncofedError as exc:
            return None, pages.error(exc)

    def node(request: Request) -> Response:
        config = load_node_config(config_path)
        credentials, credentials_error = shown(lambda: check_credentials(config))
        state_exists, state_error = shown(lambda: check_state_dir(config))
        return pages.render(
            request,
            "operator/node.html",
            {
                "config": config,
                "config_path": config_path,
                "status": status_view(config, config_path, time.time()),
                "credentials": credentials,
                "credentials_error": credentials_error,
                "state_exists": state_exists,
                "state_error": state_error,
                "policy": _policy_view(config),
            },
        )

    def datasets(request: Request) -> Response:
        config = load_node_config(config_path)
        read: list[tuple[str, DatasetFacts | None, ShownError | None]] = []
        for name, dataset in config.datasets.items():
            facts, error = shown(functools.partial(dataset_facts, name, dataset, config.name))
            read.append((name, facts, error))
        return pages.render(request, "operator/datasets.html", {"config": config, "datasets": read})

    def approvals(request: Request, error: OncofedError | None = None) -> Response:
        config = load_node_config(config_path)
        every = governance(config).approvals()
        pending = [_approval_view(a) for a in every if a.state == "pending"]
        # The latest decisions first: the one just taken is at the top.
        decided = sorted(
            (_approval_view(a) for a in every if a.state != "pending"),
            key=lambda view: -(view.approval.decided_at or 0.0),
        )
        manual = [name for name, d in config.datasets.items() if d.approval == "manual"]
        return pages.render(
            request,
            "operator/approvals.html",
            {
                "config": config,
                "pending": pending,
                "decided": decided,
                "manual": manual,
                "error": pages.error(error) if error is not None else None,
            },
            status=200 if error is None else 400,
        )

    def deciding(
        decision: Literal["approved", "rejected"],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def decide(request: Request) -> Response:
            form = await request.form()
            run_id = int(request.path_params["run_id"])
            reason = form_text(form, "reason") if decision == "rejected" else ""

            def record() -> None:
                config = load_node_config(config_path)
                decide_approval(
                    governance(config),
                    config.name,
                    run_id,
                    decision,
                    reason,
                    listing="the pending and decided tasks on the Approvals page",
                )

            try:
                await run_in_threadpool(record)
            except OncofedError as exc:
                return await run_in_threadpool(approvals, request, exc)
            verb = (
                "approved: it runs at the coordinator's next try"
                if decision == "approved"
                else "rejected: the researcher reads your reason"
            )
            return back_to(request, "/approvals", f"run {run_id} {verb}")

        return decide

    def budget(request: Request) -> Response:
        config = load_node_config(config_path)
        return pages.render(
            request,
            "operator/budget.html",
            {
                "config": config,
                "by_permit": budget_rows(config, "permit"),
                "by_researcher": budget_rows(config, "researcher"),
            },
        )

    def audit(request: Request) -> Response:
        config = load_node_config(config_path)
        opened, error = shown(lambda: node_audit_trail(config))
        context: dict[str, Any] = {
            "config": config,
            "config_path": config_path,
            "error": error,
            "trail": None,
        }
        if opened is not None:
            trail, key = opened
            try:
                problems = trail.verify(key)
                count, recent = 0, deque[AuditEntry](maxlen=RECENT_ENTRIES)
                for entry in trail.entries():
                    count += 1
                    recent.append(entry)
            finally:
                trail.close()
            flagged = {problem.seq for problem in problems}
            context["trail"] = {
                "problems": problems,
                "count": count,
                "entries": [
                    {"entry": entry, "time": utc(entry.time), "flagged": entry.seq in flagged}
                    for entry in reversed(recent)
                ],
            }
        return pages.render(request, "operator/audit.html", context)

    return [
        Route("/", node),
        Route("/datasets", datasets),
        Route("/approvals", approvals),
        Route("/approvals/{run_id:int}/approve", deciding("approved"), methods=["POST"]),
        Route("/approvals/{run_id:int}/reject", deciding("rejected"), methods=["POST"]),
        Route("/budget", budget),
        Route("/audit", audit),
    ]


__all__ = ["RECENT_ENTRIES", "StatusView", "ago", "routes", "status_view", "utc"]
