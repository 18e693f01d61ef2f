"""The console's pages and actions: Jinja templates rendered on the server, made live with htmx (polling and
Server-Sent Events), so it needs no front-end build (decision 0011).

Pages read the store and the broker through the service's own objects, in worker threads (they block on SQL
and Redis); actions go through `JobService`, as the gRPC calls do. Each page, fragment and action says how long
the server took to make it (`Server-Timing: app;dur=...`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse, ServerSentEvent

from grpc_gateway import convert
from grpc_gateway.auth import TokenAuth
from grpc_gateway.console.session import COOKIE, CSRF_HEADER, SESSION_SECONDS, ConsoleAuth, Refused
from grpc_gateway.http_api import HTTP_STATUS
from grpc_gateway.servicer import JobServicer
from grpc_gateway.v1 import jobs_pb2
from taskapp.clock import utcnow
from taskapp.config import get_settings
from taskapp.error_groups import ErrorGroup, group_errors
from taskapp.errors import TaskappError
from taskapp.jobs import (
    CANCELLABLE_STATES,
    RETRYABLE_BY_REQUEST,
    Job,
    JobFilter,
    JobState,
    Priority,
    queue_scope,
    type_scope,
)
from taskapp.overview import read_overview, read_workers
from taskapp.service import JobService

HERE = Path(__file__).parent
PAGE_SIZE = 50
#: Dead letters read for grouping, newest first; older ones are left out of the groups (and the page says so).
MAX_DEAD_LETTERS_GROUPED = 10_000
#: Characters of a payload or result shown before it is folded.
FOLD_CHARS = 2_000
#: Seconds between refreshes of the pages that refresh themselves.
REFRESH_SECONDS = 5
#: Job ids a state-tracking fragment follows at most.
MAX_TRACKED = 500


def _ago(then: datetime | None, now: datetime | None = None) -> str:
    if then is None:
        return "—"
    seconds = max(0, int(((now or utcnow()) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(ago=_ago, when=_when, pretty=_pretty)
templates.globals.update(
    FOLD_CHARS=FOLD_CHARS,
    REFRESH_SECONDS=REFRESH_SECONDS,
    STATES=list(JobState),
    PRIORITIES=list(Priority),
    CANCELLABLE=CANCELLABLE_STATES,
    RETRYABLE=RETRYABLE_BY_REQUEST,
    TERMINAL=frozenset(state for state in JobState if state.is_terminal),
)


class Invalid(Exception):
    """A filter the jobs page cannot use; shown on the page."""


def job_filter(query: dict[str, list[str]]) -> JobFilter:
    """The jobs page's filter from its query (or a bulk action's form): empty fields mean "any"; a label is
    `key=value`. A value that is not one raises `TaskappError` (INVALID_ARGUMENT) via the service's checks."""

    def one(name: str) -> str | None:
        values = [value.strip() for value in query.get(name, []) if value.strip()]
        return values[0] if values else None

    def moment(name: str) -> datetime | None:
        value = one(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(f"{name}: not a date and time: {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    labels: dict[str, str] = {}
    for label in query.get("label", []):
        if label.strip():
            key, equals, value = label.strip().partition("=")
            if not equals:
                raise Invalid(f"label: write key=value, got {label!r}")
            labels[key.strip()] = value.strip()
    state, priority = one("state"), one("priority")
    try:
        return JobFilter(
            state=JobState(state) if state else None,
            priority=Priority(priority) if priority else None,
            type=one("type"),
            labels=labels,
            created_after=moment("created_after"),
            created_before=moment("created_before"),
            job_id_prefix=one("id_prefix"),
        )
    except ValueError as exc:
        raise Invalid(str(exc)) from None


FILTER_FIELDS = ("state", "priority", "type", "label", "created_after", "created_before", "id_prefix")


def _query_of(params: list[tuple[str, str]]) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in params:
        query.setdefault(key, []).append(value)
    return query


def console(app: FastAPI, servicer: JobServicer, auth: TokenAuth | None) -> None:
    """Add the console's routes to `app` (the HTTP API's), under /console."""
    sessions = ConsoleAuth(auth)
    service = servicer.service
    beat_seconds = get_settings().lease_seconds / 6
    router = APIRouter(prefix="/console", include_in_schema=False)

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = sessions.session(request)
        context.update(
            request=request,
            csrf=sessions.csrf_token(session) if session is not None else "",
            csrf_header=CSRF_HEADER,
            signed_in=sessions.asks_sign_in and session is not None,
            now=utcnow(),
        )
        # Never cached, never shown in another site's frame (clickjacking).
        headers = {"Cache-Control": "no-store", "X-Frame-Options": "DENY"}
        return HTMLResponse(templates.get_template(name).render(context), status_code=status, headers=headers)

    def page(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        """A page for a signed-in operator: others are sent to sign in first."""

        @timed
        async def guarded(request: Request, **kwargs: Any) -> Response:
            if sessions.session(request) is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)
            return await handler(request, **kwargs)

        return _routed_as(handler, guarded)

    def fragment(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        """A piece of a page (htmx swaps it in): refused without a session."""

        @timed
        async def guarded(request: Request, **kwargs: Any) -> Response:
            if sessions.session(request) is None:
                return HTMLResponse("sign in first", status_code=401)
            return await handler(request, **kwargs)

        return _routed_as(handler, guarded)

    def action(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        """A POST that changes something: the operator's own (`ConsoleAuth.check_action`), its form parsed."""

        @timed
        async def guarded(request: Request, **kwargs: Any) -> Response:
            try:
                sessions.check_action(request)
            except Refused as refused:
                return HTMLResponse(refused.message, status_code=refused.status)
            form = _query_of(
                parse_qsl((await request.body()).decode(errors="replace"), keep_blank_values=True)
            )
            try:
                return await handler(request, form, **kwargs)
            except (TaskappError, Invalid) as exc:
                return render(request, "message.html", status=_status_of(exc), message=str(exc), ok=False)

        return _routed_as(handler, guarded, drop=("form",))

    # Signing in and out.

    @router.get("/login")
    async def login_page(request: Request, next: str = "/console/") -> Response:
        return render(request, "login.html", next=_safe_next(next), error="")

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        target = _safe_next(form.get("next", "/console/"))
        token = form.get("token", "").strip()
        if not sessions.asks_sign_in:
            return RedirectResponse(target, status_code=303)
        if not token or not sessions.accepts(token):
            return render(request, "login.html", status=401, next=target, error="That token is not accepted.")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=SESSION_SECONDS,
            path="/console",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        return response

    @router.post("/logout")
    @action
    async def logout(request: Request, form: dict[str, list[str]]) -> Response:
        response = HTMLResponse("", headers={"HX-Redirect": "/console/login"})
        response.delete_cookie(COOKIE, path="/console", secure=True, httponly=True, samesite="strict")
        return response

    # The overview.

    async def overview_context() -> dict[str, Any]:
        try:
            overview = await asyncio.to_thread(
                read_overview, service.store, service.broker_stats, utcnow(), beat_seconds
            )
        except TaskappError as exc:
            return {"overview": None, "error": str(exc)}
        peak = max([minute.succeeded + minute.failed for minute in overview.minutes] + [1])
        return {"overview": overview, "peak": peak, "error": ""}

    @router.get("/")
    @page
    async def overview_page(request: Request) -> Response:
        return render(request, "overview.html", **await overview_context())

    @router.get("/overview/live")
    @fragment
    async def overview_live(request: Request) -> Response:
        return render(request, "overview_body.html", **await overview_context())

    # Jobs.

    @router.get("/jobs")
    @page
    async def jobs_page(request: Request) -> Response:
        query = _query_of(request.query_params.multi_items())
        page_token = (query.get("page_token") or [""])[0]
        context: dict[str, Any] = {
            "query": query,
            "filters": [(key, value) for key in FILTER_FIELDS for value in query.get(key, []) if value],
            "jobs": [],
            "next_token": "",
            "first_page": not page_token,
            "error": "",
        }
        try:
            filter = job_filter(query)
            listed = await asyncio.to_thread(service.list, filter, PAGE_SIZE, page_token)
            context.update(jobs=listed.jobs, next_token=listed.next_page_token)
        except (TaskappError, Invalid) as exc:
            context["error"] = str(exc)
            return render(request, "jobs.html", status=400, **context)
        return render(request, "jobs.html", **context)

    @router.post("/jobs/bulk/preview")
    @action
    async def bulk_preview(request: Request, form: dict[str, list[str]]) -> Response:
        """What a bulk action would do, counted first, with the button that does it."""
        verb, ids = _verb(form), form.get("job_id", [])
        if _scope(form) == "selected":
            if not ids:
                raise Invalid("select at least one job first")
            jobs = await asyncio.to_thread(_get_all, service, ids)
            allowed = CANCELLABLE_STATES if verb == "cancel" else RETRYABLE_BY_REQUEST
            count, other = sum(j.state in allowed for j in jobs), sum(j.state not in allowed for j in jobs)
        else:
            filter = job_filter(form)
            act = service.cancel_many if verb == "cancel" else service.retry_many
            outcome = await asyncio.to_thread(act, filter, dry_run=True)
            count, other = outcome.acted_on, outcome.skipped
        fields = [(key, value) for key in (*FILTER_FIELDS, "job_id") for value in form.get(key, [])]
        return render(
            request,
            "bulk_confirm.html",
            verb=verb,
            scope=_scope(form),
            count=count,
            other=other,
            fields=fields,
        )

    @router.post("/jobs/bulk")
    @action
    async def bulk(request: Request, form: dict[str, list[str]]) -> Response:
        verb = _verb(form)
        if _scope(form) == "selected":
            ids = form.get("job_id", [])
            act_each = service.cancel_each if verb == "cancel" else service.retry_each
            done = await asyncio.to_thread(act_each, ids)
            skipped = len(ids) - done
        else:
            act = service.cancel_many if verb == "cancel" else service.retry_many
            outcome = await asyncio.to_thread(act, job_filter(form))
            done, skipped = outcome.acted_on, outcome.skipped
        past = "cancelled" if verb == "cancel" else "queued again"
        return render(
            request, "message.html", ok=True, message=f"{done} job(s) {past}; {skipped} left as they were."
        )

    @router.get("/jobs/states")
    @fragment
    async def job_states(request: Request) -> Response:
        """The states of some jobs (those an action just queued again), refreshing until all have finished."""
        ids = request.query_params.getlist("id")[:MAX_TRACKED]
        jobs = await asyncio.to_thread(_get_all, service, ids)
        return render(request, "job_states.html", jobs=jobs, ids=ids)

    @router.get("/jobs/{job_id}")
    @page
    async def job_page(request: Request, job_id: str) -> Response:
        try:
            context = await asyncio.to_thread(_job_context, service, job_id)
        except TaskappError as exc:
            return render(request, "message.html", status=_status_of(exc), message=str(exc), ok=False)
        return render(request, "job.html", **context)

    @router.get("/jobs/{job_id}/live")
    @fragment
    async def job_live(request: Request, job_id: str) -> Response:
        """The changing part of a job's page, again at each of its events (WatchJob), until it finishes."""
        events = servicer.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), _NoContext())

        async def stream() -> AsyncIterator[ServerSentEvent]:
            try:
                async for event in events:
                    context = await asyncio.to_thread(_job_context, service, job_id)
                    html = templates.get_template("job_live.html").render(context)
                    yield ServerSentEvent(data=html, event="update")
                    if event.state in _TERMINAL_PB:
                        yield ServerSentEvent(data="", event="done")
                        return
            except (Refused, TaskappError):
                return  # an unknown job, or the gateway stopping: the page keeps what it shows

        return EventSourceResponse(stream(), ping=15)

    @router.post("/jobs/{job_id}/cancel")
    @action
    async def cancel_job(request: Request, form: dict[str, list[str]], job_id: str) -> Response:
        outcome = await asyncio.to_thread(service.cancel, job_id)
        message = "Cancelled." if outcome.cancelled else f"Not cancelled: the job is {outcome.state.value}."
        return render(request, "message.html", ok=outcome.cancelled, message=message)

    @router.post("/jobs/{job_id}/retry")
    @action
    async def retry_job(request: Request, form: dict[str, list[str]], job_id: str) -> Response:
        await asyncio.to_thread(service.retry, job_id)
        jobs = await asyncio.to_thread(_get_all, service, [job_id])
        return render(request, "job_states.html", jobs=jobs, ids=[job_id])

    # Dead letters.

    async def dead_letter_groups() -> tuple[list[ErrorGroup], bool]:
        jobs = await asyncio.to_thread(
            service.store.list, JobFilter(state=JobState.DEAD_LETTER), MAX_DEAD_LETTERS_GROUPED + 1, None
        )
        return group_errors(jobs[:MAX_DEAD_LETTERS_GROUPED]), len(jobs) > MAX_DEAD_LETTERS_GROUPED

    @router.get("/dead-letters")
    @page
    async def dead_letters_page(request: Request) -> Response:
        groups, truncated = await dead_letter_groups()
        return render(
            request, "dead_letters.html", groups=groups, truncated=truncated, limit=MAX_DEAD_LETTERS_GROUPED
        )

    @router.post("/dead-letters/{group_key}/replay")
    @action
    async def replay_group(request: Request, form: dict[str, list[str]], group_key: str) -> Response:
        groups, _ = await dead_letter_groups()
        group = next((group for group in groups if group.key == group_key), None)
        if group is None:
            raise Invalid("this group has no dead letters any more (replayed already?): reload the page")
        await asyncio.to_thread(service.retry_each, group.job_ids)
        ids = group.job_ids[:MAX_TRACKED]
        return render(
            request, "job_states.html", jobs=await asyncio.to_thread(_get_all, service, ids), ids=ids
        )

    # Workers.

    async def workers_context() -> dict[str, Any]:
        workers = await asyncio.to_thread(read_workers, service.store, utcnow(), beat_seconds)
        return {"workers": workers}

    @router.get("/workers")
    @page
    async def workers_page(request: Request) -> Response:
        return render(request, "workers.html", **await workers_context())

    @router.get("/workers/live")
    @fragment
    async def workers_live(request: Request) -> Response:
        return render(request, "workers_body.html", **await workers_context())

    # Flow control: pause and resume queues and job types, with their limits and what waits.

    async def flow_context() -> dict[str, Any]:
        return await asyncio.to_thread(_flow_context, service)

    @router.get("/flow")
    @page
    async def flow_page(request: Request) -> Response:
        return render(request, "flow.html", message="", **await flow_context())

    @router.post("/flow/{kind}/{name}/{verb}")
    @action
    async def pause_or_resume(
        request: Request, form: dict[str, list[str]], kind: str, name: str, verb: str
    ) -> Response:
        if kind not in ("queues", "types") or verb not in ("pause", "resume"):
            raise Invalid(f"no such action: {kind} {verb}")
        paused = verb == "pause"
        if kind == "queues":
            try:
                priority = Priority(name)
            except ValueError:
                raise Invalid(f"no queue {name!r}") from None
            await asyncio.to_thread(service.pause_queue, priority, paused)
            what = f"The {name} queue"
        else:
            await asyncio.to_thread(service.pause_type, name, paused)
            what = f"Job type {name}"
        message = f"{what} is {'paused' if paused else 'resumed'}."
        return render(request, "flow_body.html", message=message, **await flow_context())

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.get("/console", include_in_schema=False)
    async def console_root() -> Response:
        return RedirectResponse("/console/", status_code=308)


def timed(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """The response says how long the server took to make it (`Server-Timing`)."""

    async def answer(request: Request, **kwargs: Any) -> Response:
        started = time.perf_counter()
        response = await handler(request, **kwargs)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    return answer


_TERMINAL_PB = frozenset(convert.state_to_pb(state) for state in JobState if state.is_terminal)


class _NoContext:
    """WatchJob's context for the console's stream: an unknown job ends it (the page said so already)."""

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        raise Refused(404, details)


def _flow_context(service: JobService) -> dict[str, Any]:
    """Each queue and each job type this gateway knows, with its control, and the jobs waiting in lines."""
    controls = {control.scope: control for control in service.flow_controls()}
    waiting = service.store.waiting_stats(top_keys=10)
    return {
        "queues": [(priority, controls.get(queue_scope(priority))) for priority in Priority],
        "types": [(handler.type, controls.get(type_scope(handler.type))) for handler in service.registry],
        "waiting": waiting,
    }


def _get_all(service: JobService, job_ids: list[str]) -> list[Job]:
    """The jobs of `job_ids` that exist, in that order."""
    jobs = []
    for job_id in job_ids:
        job = service.store.get(job_id)
        if job is not None:
            jobs.append(job)
    return jobs


def _job_context(service: JobService, job_id: str) -> dict[str, Any]:
    job = service.get(job_id)
    events = service.events_after(job_id, 0)
    attempts: dict[int, list[Any]] = {}
    for line in service.logs(job_id):
        attempts.setdefault(line.attempt, []).append(line)
    return {"job": job, "events": events, "logs": attempts}


def _verb(form: dict[str, list[str]]) -> str:
    verb = (form.get("verb") or [""])[0]
    if verb not in ("cancel", "retry"):
        raise Invalid("verb: must be cancel or retry")
    return verb


def _scope(form: dict[str, list[str]]) -> str:
    scope = (form.get("scope") or [""])[0]
    if scope not in ("selected", "filter"):
        raise Invalid("scope: must be selected or filter")
    return scope


def _status_of(error: Exception) -> int:
    code = getattr(error, "grpc_code", "INVALID_ARGUMENT")
    return HTTP_STATUS.get(code, 500)


def _safe_next(target: str) -> str:
    """Where to go after signing in: a console page of this gateway, never another site."""
    if target.startswith("/console") and not target.startswith("//"):
        return target
    return "/console/"


def _routed_as(
    handler: Callable[..., Awaitable[Response]],
    guarded: Callable[..., Awaitable[Response]],
    drop: tuple[str, ...] = (),
) -> Callable[..., Awaitable[Response]]:
    """`guarded` under `handler`'s name and signature (less `drop`), which FastAPI reads for its parameters."""
    signature = inspect.signature(handler)
    guarded.__name__ = handler.__name__
    guarded.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in signature.parameters.items() if name not in drop]
    )
    return guarded
