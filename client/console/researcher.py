"""The researcher's pages: applications filed and amended, analyses run from forms made
from each task's declaration, tasks followed live, results as tables and plots
(downloadable), and the privacy budget spent under each permit.

Tasks are signed in this process with the researcher's own key (``Session``),
exactly as ``oncofed query`` signs them.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from oncofed.client.access import DataAccessClient
from oncofed.client.console.app import ConsoleSettings
from oncofed.client.console.body import application_view
from oncofed.client.console.catalogue import catalogue
from oncofed.client.console.forms import (
    application_from_form,
    task_fields,
    task_form_values,
    task_request,
)
from oncofed.client.console.pages import Pages, back_to, form_text
from oncofed.client.console.results import figure_png, result_csv, result_view
from oncofed.client.console.task_log import SubmittedTask, TaskLog
from oncofed.client.session import IDLE_DETAILS, Session
from oncofed.governance.permits import Purpose
from oncofed.kernel.errors import OncofedError, QueryError
from oncofed.tasks import TASKS, get_task

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def routes(settings: ConsoleSettings, pages: Pages) -> Sequence[BaseRoute]:
    assert settings.credentials is not None, "a researcher's console runs with their credentials"
    folder = settings.credentials
    log = TaskLog(settings.state_dir)
    # One connection for status and results; each submission signs under the chosen permit.
    watcher = Session(settings.coordinator, credentials=folder, progress=False)

    def access() -> DataAccessClient:
        return DataAccessClient(settings.coordinator, folder)

    def my_permits() -> list[str]:
        with access() as client:
            granted = [r.permit_id for r in client.applications() if r.permit_id]
        used = [t.permit for t in log.tasks()]
        return list(dict.fromkeys([*granted, *used]))

    # ---- applications --------------------------------------------------

    def applications(request: Request) -> Response:
        with access() as client:
            records = [application_view(r) for r in client.applications()]
        records.sort(key=lambda r: -r["updated"].timestamp())
        return pages.render(request, "researcher/applications.html", {"applications": records})

    def application_form(
        request: Request,
        values: dict[str, Any] | None = None,
        error: OncofedError | None = None,
        amends: str = "",
    ) -> Response:
        known = catalogue(watcher.node_infos())
        today = datetime.date.today()
        defaults = {
            "period_start": today.isoformat(),
            "period_end": today.replace(year=today.year + 1).isoformat(),
            "purposes": [],
            "task_types": [],
        }
        return pages.render(
            request,
            "researcher/application_form.html",
            {
                "values": {**defaults, **(values or {})},
                "amends": amends,
                "catalogue": known,
                "purposes": list(Purpose),
                "tasks": TASKS,
                "error": pages.error(error) if error is not None else None,
            },
            status=400 if error is not None else 200,
        )

    def new_application(request: Request) -> Response:
        amends = request.query_params.get("amends", "")
        if not amends:
            return application_form(request)
        with access() as client:
            document = json.loads(client.application(amends).application_json)
        dataset = document["datasets"][0]
        values = {
            **document,
            "dataset": dataset["dataset"],
            "variables": ", ".join(dataset.get("variables") or []),
            "epsilon": dataset.get("epsilon") or "",
            "release": dataset.get("release", "dp"),
        }
        return application_form(request, values, amends=amends)

    async def file_application(request: Request) -> Response:
        form = await request.form()
        amends = form_text(form, "amends")

        def submit() -> str:
            with access() as client:
                document = application_from_form(form, client.identity.card)
                return str(client.submit_application(document, amends).application_id)

        try:
            application_id = await run_in_threadpool(submit)
        except OncofedError as exc:
            values = {
                k: form.getlist(k) if k in ("purposes", "task_types") else v
                for k, v in form.items()
            }
            return await run_in_threadpool(application_form, request, values, exc, amends)
        return back_to(
            request, f"/applications/{application_id}", f"application {application_id} filed"
        )

    def application(request: Request) -> Response:
        with access() as client:
            record = application_view(client.application(request.path_params["application_id"]))
        return pages.render(request, "researcher/application.html", {"application": record})

    # ---- analyses and tasks --------------------------------------------

    def analyses(request: Request) -> Response:
        return pages.render(request, "researcher/analyses.html", {"tasks": TASKS})

    def analysis_form(
        request: Request, values: dict[str, Any] | None = None, error: OncofedError | None = None
    ) -> Response:
        task = _task(request.path_params["task"])
        earlier = log.task(request.query_params.get("again", ""))
        if values is None and earlier is not None and earlier.task == task.name:
            values = {"permit": earlier.permit, **task_form_values(task, earlier.params)}
        return pages.render(
            request,
            "researcher/analysis_form.html",
            {
                "task": task,
                "fields": task_fields(task),
                "values": values or {},
                "permits": my_permits(),
                "datasets": list(catalogue(watcher.node_infos())),
                "error": pages.error(error) if error is not None else None,
            },
            status=400 if error is not None else 200,
        )

    async def submit_analysis(request: Request) -> Response:
        form = await request.form()
        task = _task(request.path_params["task"])
        permit = form_text(form, "permit")

        def submit() -> str:
            params = task_request(task, form)
            with Session(
                settings.coordinator, credentials=folder, permit=permit or None, progress=False
            ) as session:
                task_id = session.submit(task.name, **params)
            # The id names files and downloads here: only what a coordinator's ids look like.
            if not TASK_ID.fullmatch(task_id):
                raise OncofedError(
                    f"the coordinator answered with a task id this console does not accept: "
                    f"{task_id[:80]!r}",
                    rule="console.task_id",
                    fix="the coordinator is not behaving as oncofed's does; tell its operator",
                )
            log.add(SubmittedTask(task_id, task.name, permit, _plain(params), time.time()))
            return task_id

        try:
            task_id = await run_in_threadpool(submit)
        except OncofedError as exc:
            return await run_in_threadpool(analysis_form, request, dict(form), exc)
        return back_to(request, f"/tasks/{task_id}")

    def tasks(request: Request) -> Response:
        rows = []
        for entry in log.tasks():
            state = "succeeded" if log.result(entry.task_id) is not None else _state(entry)
            rows.append({"entry": entry, "state": state, "at": _utc(entry.submitted_at)})
        return pages.render(request, "researcher/tasks.html", {"rows": rows})

    def _state(entry: SubmittedTask) -> str:
        try:
            return str(watcher.status(entry.task_id).state)
        except OncofedError:
            return "unknown (coordinator unreachable)"

    def task_page(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        entry = log.task(task_id)
        if entry is None:
            raise QueryError(
                f"this console submitted no task {task_id!r}",
                rule="console.task",
                fix="open it from the Tasks page",
            )
        context: dict[str, Any] = {
            "entry": entry,
            "at": _utc(entry.submitted_at),
            "idle_details": IDLE_DETAILS,
            "params": task_form_values(get_task(entry.task), entry.params),
        }
        result = _result(entry)
        if result is None:
            status = watcher.status(task_id)
            if status.state in FINISHED:
                try:
                    result = _fetch(entry)
                except OncofedError as exc:
                    context["error"] = pages.error(exc)
                    context["state"] = status.state
            else:
                context["status"] = status
                context["state"] = status.state
        if result is not None:
            context["state"] = "succeeded"
            context["view"] = result_view(entry.task, result)
        return pages.render(request, "researcher/task.html", context)

    def _result(entry: SubmittedTask) -> BaseModel | None:
        kept = log.result(entry.task_id)
        return None if kept is None else get_task(entry.task).result.model_validate_json(kept)

    def _fetch(entry: SubmittedTask) -> BaseModel:
        result_json = watcher.wait(entry.task_id)
        log.keep_result(entry.task_id, result_json)
        model: BaseModel = get_task(entry.task).result.model_validate_json(result_json)
        return model

    def task_status(request: Request) -> Response:
        status = watcher.status(request.path_params["task_id"])
        expected = f" of {status.expected}" if status.expected else ""
        return JSONResponse(
            {
                "state": status.state,
                "replies": status.replies,
                "expected": status.expected,
                "finished": status.state in FINISHED,
                "text": f"{status.state}: {status.replies}{expected} node replies"
                + (f"; {status.detail}" if status.detail not in ("", *IDLE_DETAILS) else ""),
            }
        )

    def _kept(request: Request) -> tuple[SubmittedTask, BaseModel]:
        task_id = request.path_params["task_id"]
        entry = log.task(task_id)
        result = _result(entry) if entry is not None else None
        if entry is None or result is None:
            raise QueryError(
                f"no result of task {task_id!r} is held here yet",
                rule="console.result",
                fix="open the task's page first; it fetches the result once the task succeeds",
            )
        return entry, result

    def result_csv_file(request: Request) -> Response:
        entry, result = _kept(request)
        return Response(
            result_csv(result),
            media_type="text/csv",
            headers={"Content-Disposition": _attachment(entry, "csv")},
        )

    def result_png_file(request: Request) -> Response:
        entry, result = _kept(request)
        figure = result_view(entry.task, result).figure
        if figure is None:
            raise QueryError(f"a {entry.task} result has no plot", rule="console.plot")
        download = request.query_params.get("download") == "1"
        headers = {"Content-Disposition": _attachment(entry, "png")} if download else {}
        return Response(figure_png(figure), media_type="image/png", headers=headers)

    def cancel(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        state = watcher.cancel(task_id)
        return back_to(request, f"/tasks/{task_id}", f"task {task_id}: {state}")

    # ---- budget --------------------------------------------------------

    def budget(request: Request) -> Response:
        spent: dict[tuple[str, str], dict[str, float]] = {}
        counted: dict[str, int] = {}
        for entry in log.tasks():
            kept = log.result(entry.task_id)
            charged = (json.loads(kept).get("dp") or {}).get("epsilon", {}) if kept else {}
            dataset = str(entry.params.get("dataset", ""))
            per_node = spent.setdefault((entry.permit, dataset), {})
            for node, epsilon in charged.items():
                per_node[node] = per_node.get(node, 0.0) + float(epsilon)
            counted[entry.permit] = counted.get(entry.permit, 0) + bool(charged)
        rows = []
        with access() as client:
            for permit_id in my_permits():
                try:
                    permit = client.permit(permit_id).permit
                except OncofedError:
                    continue
                for grant in permit.datasets:
                    nodes = spent.get((permit_id, grant.dataset), {})
                    most = max(nodes.values(), default=0.0)
                    rows.append(
                        {
                            "permit": permit_id,
                            "dataset": grant.dataset,
                            "release": grant.release,
                            "granted": grant.epsilon,
                            "spent": nodes,
                            "most": most,
                            "left": None if grant.epsilon is None else grant.epsilon - most,
                            "tasks": counted.get(permit_id, 0),
                        }
                    )
        return pages.render(request, "researcher/budget.html", {"rows": rows})

    return [
        Route("/", applications),
        Route("/applications/new", new_application),
        Route("/applications", file_application, methods=["POST"]),
        Route("/applications/{application_id}", application),
        Route("/analyses", analyses),
        Route("/analyses/{task}", analysis_form),
        Route("/analyses/{task}", submit_analysis, methods=["POST"]),
        Route("/tasks", tasks),
        Route("/tasks/{task_id}", task_page),
        Route("/tasks/{task_id}/status.json", task_status),
        Route("/tasks/{task_id}/result.csv", result_csv_file),
        Route("/tasks/{task_id}/plot.png", result_png_file),
        Route("/tasks/{task_id}/cancel", cancel, methods=["POST"]),
        Route("/budget", budget),
    ]


def _task(name: str) -> Any:
    if name not in TASKS:
        raise QueryError(
            f"no analysis {name!r} is installed",
            rule="task.unknown",
            fix="choose one on the Run an analysis page",
        )
    return TASKS[name]


def _attachment(entry: SubmittedTask, suffix: str) -> str:
    """A download's file name of letters, digits, '.', '_' and '-' only: task ids are the
    coordinator's, and a quote or a line break would rewrite the header."""
    name = re.sub(r"[^A-Za-z0-9._-]", "", f"{entry.task}-{entry.task_id}")[:120]
    return f'attachment; filename="{name}.{suffix}"'


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON keeps them (the task log is JSON lines)."""
    return dict(json.loads(json.dumps(params, default=list)))


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


__all__ = ["routes"]
