"""The JobService over HTTP/JSON, beside gRPC in the gateway process, on TASKAPP_HTTP_ADDR.

Each route turns its JSON (the proto3 JSON mapping, with the proto's field names) into the request message
with `json_format`, calls the gRPC servicer's own method with an `HttpCall` in the place of the gRPC context,
and answers the response message as JSON. So validation, limits, the shutdown gate and the metrics are the
gRPC calls' own. An aborted call answers the status code's HTTP twin (`HTTP_STATUS`) and a JSON body naming
the code, the message and, when the error is about one, the request field. WatchJob is a stream of
Server-Sent Events. The OpenAPI document (`/openapi.json`) comes from the same models (`http_schema`).
"""

import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Annotated, Any, NoReturn, TypeVar, cast

import grpc
import uvicorn
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from grpc_gateway import convert
from grpc_gateway.auth import REFUSAL, TokenAuth
from grpc_gateway.http_schema import model_of
from grpc_gateway.servicer import FIELD_KEY, JobServicer
from grpc_gateway.v1 import jobs_pb2
from taskapp.config import split_address
from taskapp.jobs import Priority

#: A gRPC status code's HTTP twin. RESOURCE_EXHAUSTED is 413 when a request (or a field of it) is too large,
#: 429 when a limit of the service is reached.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
TOO_LARGE = 413
#: Seconds between SSE comments on a quiet stream, so that proxies do not close it as idle.
SSE_PING_SECONDS = 15

MessageT = TypeVar("MessageT", bound=Message)
_UNKNOWN_FIELD = re.compile(r'^Message type "[\w.]+" has no field named "([^"]*)"')
#: A label in a query: `labels[env]=prod`, OpenAPI's deepObject style.
_LABEL_PARAMETER = re.compile(r"^labels\[(.*)\]$")
_PARSE_ERROR = re.compile(
    r"^(?:Failed to parse (?P<last>\w+) field: )*(?P<problem>.*?)(?: at \w+\.(?P<field>\S+?))?\.*$", re.DOTALL
)


class Aborted(Exception):
    """A call ended with a gRPC status other than OK."""

    def __init__(self, code: str, message: str, field: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        too_large = code == "RESOURCE_EXHAUSTED" and field is not None
        self.http_status = http_status or (TOO_LARGE if too_large else HTTP_STATUS.get(code, 500))


class HttpCall:
    """What the servicer asks of its gRPC context, for a call that came over HTTP: `abort`."""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, str]] = ()
    ) -> NoReturn:
        raise Aborted(code.name, details, dict(trailing_metadata).get(FIELD_KEY))


class ErrorDetail(BaseModel):
    #: The gRPC status code's name, e.g. INVALID_ARGUMENT.
    code: str
    message: str
    #: The request field the error is about (`jobs[3].payload`), when it is about one.
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_response(error: Aborted) -> JSONResponse:
    detail = {"code": error.code, "message": error.message}
    if error.field is not None:
        detail["field"] = error.field
    headers = {"WWW-Authenticate": "Bearer"} if error.code == "UNAUTHENTICATED" else None
    return JSONResponse({"error": detail}, status_code=error.http_status, headers=headers)


def to_json(message: Message) -> dict[str, Any]:
    """A response message in the proto3 JSON mapping, every field present (unset optional ones aside)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def parse(data: BaseModel | dict[str, Any] | None, message: MessageT) -> MessageT:
    """A request message from checked JSON; what only protobuf can check (a timestamp's range) is refused as
    INVALID_ARGUMENT."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json", exclude_unset=True)
    try:
        return json_format.ParseDict(data or {}, message)
    except json_format.ParseError as exc:
        if unknown := _UNKNOWN_FIELD.match(str(exc)):
            raise Aborted(
                "INVALID_ARGUMENT", f"{unknown[1]}: is not a field of this call", unknown[1]
            ) from None
        # "Failed to parse jobs field: Failed to parse run_at field: <problem> at SubmitJobsRequest.jobs[1].run_at."
        parts = _PARSE_ERROR.match(str(exc))
        field = parts and (parts["field"] or parts["last"])
        if parts is None or field is None:
            raise Aborted("INVALID_ARGUMENT", str(exc)) from None
        raise Aborted("INVALID_ARGUMENT", f"{field}: {parts['problem'].rstrip('.')}", field) from None


class Limits:
    """What gRPC's server options refuse, refused over HTTP too, with the JSON error body: a body over
    `max_bytes` (413) and a call beyond `max_calls` at once (429; open event streams count)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_calls: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_calls = max_calls
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.calls >= self.max_calls:
            busy = f"the gateway is handling {self.max_calls} calls at once: try again"
            await error_response(Aborted("RESOURCE_EXHAUSTED", busy))(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(self._too_large())(scope, receive, send)
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        self.calls += 1
        try:
            await self.app(scope, counted, send)
        finally:
            self.calls -= 1

    def _too_large(self) -> Aborted:
        return Aborted(
            "RESOURCE_EXHAUSTED", f"the request is over {self.max_bytes} bytes", http_status=TOO_LARGE
        )


def model(name: str) -> type[BaseModel]:
    """The model of a jobs.proto message (`http_schema`)."""
    return model_of(jobs_pb2.DESCRIPTOR.message_types_by_name[name])


# Module-level names: FastAPI resolves a route's annotations in the module's namespace.
SubmitJobRequest = model("SubmitJobRequest")
SubmitJobsRequest = model("SubmitJobsRequest")
ListJobsRequest = model("ListJobsRequest")
CancelJobsRequest = model("CancelJobsRequest")
RetryJobsRequest = model("RetryJobsRequest")
ScheduleBody = model("Schedule")
JobId = Annotated[str, Path(description="The job's id")]
ScheduleName = Annotated[str, Path(description="The schedule's name")]
TypeLimitBody = model("SetTypeLimitRequest")
KeyRateBody = model("SetKeyRateRequest")
ConcurrencyKey = Annotated[str, Path(description="A concurrency key")]
JobType = Annotated[str, Path(description="A registered job type")]
Queue = Annotated[Priority, Path(description="A priority queue")]


def query_parameters(request: type[BaseModel]) -> list[dict[str, Any]]:
    """A request message's fields as OpenAPI query parameters; a map as `name[key]=value` (deepObject)."""
    parameters = []
    for name, schema in request.model_json_schema()["properties"].items():
        parameter = {"name": name, "in": "query", "required": False, "schema": schema}
        if schema.get("type") == "object":
            parameter.update(style="deepObject", explode=True)
        parameters.append(parameter)
    return parameters


def http_app(servicer: JobServicer, auth: TokenAuth | None) -> FastAPI:
    """The API's routes on `servicer`; every one but /healthz and the document asks for a token when `auth`."""
    bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`, as on gRPC")

    async def authorized(request: Request, _: Annotated[Any, Depends(bearer)]) -> None:
        if auth is not None and not auth.accepts(request.headers.get("authorization")):
            raise Aborted("UNAUTHENTICATED", REFUSAL)

    async def json_body(request: Request) -> None:
        """A body must say it is JSON: a browser cannot send that from another site without asking first (CORS),
        which keeps web pages from submitting jobs to a gateway on this machine that asks for no token."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise Aborted(
                "INVALID_ARGUMENT",
                "send the body as JSON, with Content-Type: application/json",
                http_status=415,
            )

    app = FastAPI(
        title="taskapp",
        summary="Durable jobs on Celery: the JobService of jobs.proto over HTTP/JSON",
        version="1",
        redoc_url=None,
        responses={
            "default": {"model": ErrorBody, "description": "An error: its gRPC code, message and field"}
        },
    )
    app.add_exception_handler(Aborted, lambda _, exc: error_response(exc))
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]

    call = HttpCall()
    guarded = [Depends(authorized)]
    with_body = [Depends(authorized), Depends(json_body)]

    async def answer(method: Callable[..., Awaitable[Message]], request: Message) -> JSONResponse:
        return JSONResponse(to_json(await method(request, call)))

    @app.get("/healthz", tags=["health"], summary="The gateway answers (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.post("/v1/jobs", tags=["jobs"], dependencies=with_body, response_model=model("SubmitJobResponse"))
    async def submit_job(body: SubmitJobRequest) -> JSONResponse:  # type: ignore[valid-type]
        """SubmitJob: creates a job, or returns the existing one for a repeated job_id with the same request."""
        return await answer(servicer.SubmitJob, parse(body, jobs_pb2.SubmitJobRequest()))

    @app.post(
        "/v1/jobs:batch", tags=["jobs"], dependencies=with_body, response_model=model("SubmitJobsResponse")
    )
    async def submit_jobs(body: SubmitJobsRequest) -> JSONResponse:  # type: ignore[valid-type]
        """SubmitJobs: up to 1,000 jobs, all validated before any is written."""
        return await answer(servicer.SubmitJobs, parse(body, jobs_pb2.SubmitJobsRequest()))

    @app.get(
        "/v1/jobs",
        tags=["jobs"],
        dependencies=guarded,
        response_model=model("ListJobsResponse"),
        openapi_extra={"parameters": query_parameters(ListJobsRequest)},
    )
    async def list_jobs(request: Request) -> JSONResponse:
        """ListJobs: newest first, with optional filters (labels as `labels[key]=value`) and keyset paging."""
        query: dict[str, Any] = {}
        for key, value in request.query_params.multi_items():
            if label := _LABEL_PARAMETER.match(key):
                query.setdefault("labels", {})[label[1]] = value
            elif key in query:
                raise Aborted("INVALID_ARGUMENT", f"{key}: is given more than once", key)
            else:
                query[key] = value
        return await answer(servicer.ListJobs, parse(query, jobs_pb2.ListJobsRequest()))

    @app.post("/v1/jobs:cancel", tags=["jobs"], dependencies=with_body, response_model=model("BulkResponse"))
    async def cancel_jobs(body: CancelJobsRequest) -> JSONResponse:  # type: ignore[valid-type]
        """CancelJobs: every job the filter matches that is not finished; `dry_run` only counts."""
        return await answer(servicer.CancelJobs, parse(body, jobs_pb2.CancelJobsRequest()))

    @app.post("/v1/jobs:retry", tags=["jobs"], dependencies=with_body, response_model=model("BulkResponse"))
    async def retry_jobs(body: RetryJobsRequest) -> JSONResponse:  # type: ignore[valid-type]
        """RetryJobs: every FAILED, DEAD_LETTER or CANCELLED job the filter matches; `dry_run` only counts."""
        return await answer(servicer.RetryJobs, parse(body, jobs_pb2.RetryJobsRequest()))

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=guarded, response_model=model("Job"))
    async def get_job(job_id: JobId) -> JSONResponse:
        """GetJob."""
        return await answer(servicer.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))

    @app.post(
        "/v1/jobs/{job_id}:cancel",
        tags=["jobs"],
        dependencies=guarded,
        response_model=model("CancelJobResponse"),
    )
    async def cancel_job(job_id: JobId) -> JSONResponse:
        """CancelJob: a finished job answers cancelled=false."""
        return await answer(servicer.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id))

    @app.post("/v1/jobs/{job_id}:retry", tags=["jobs"], dependencies=guarded, response_model=model("Job"))
    async def retry_job(job_id: JobId) -> JSONResponse:
        """RetryJob: a FAILED, DEAD_LETTER or CANCELLED job runs again with fresh attempts."""
        return await answer(servicer.RetryJob, jobs_pb2.RetryJobRequest(job_id=job_id))

    @app.get(
        "/v1/jobs/{job_id}/logs",
        tags=["jobs"],
        dependencies=guarded,
        response_model=model("GetJobLogsResponse"),
    )
    async def get_job_logs(job_id: JobId) -> JSONResponse:
        """GetJobLogs: what the job's handler logged, oldest first."""
        return await answer(servicer.GetJobLogs, jobs_pb2.GetJobLogsRequest(job_id=job_id))

    @app.get(
        "/v1/jobs/{job_id}/events",
        tags=["jobs"],
        dependencies=guarded,
        response_class=EventSourceResponse,
        responses={
            200: {
                "description": "WatchJob as Server-Sent Events: one `job_event` per JobEvent (its JSON in "
                "`data`), the current state first, until a terminal state",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def watch_job(job_id: JobId) -> EventSourceResponse:
        """WatchJob."""
        events = servicer.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), call)
        first = await anext(events)  # an unknown job is a 404, not a stream that ends at once

        async def stream() -> AsyncIterator[ServerSentEvent]:
            yield _sse(first)
            async for event in events:
                yield _sse(event)

        return EventSourceResponse(stream(), ping=SSE_PING_SECONDS)

    @app.get(
        "/v1/queues:stats",
        tags=["queues"],
        dependencies=guarded,
        response_model=model("GetQueueStatsResponse"),
    )
    async def queue_stats() -> JSONResponse:
        """GetQueueStats: messages waiting per priority, dead letters, scheduled jobs, workers that answer."""
        return await answer(servicer.GetQueueStats, jobs_pb2.GetQueueStatsRequest())

    put_response = model("PutScheduleResponse")

    @app.post("/v1/schedules", tags=["schedules"], dependencies=with_body, response_model=put_response)
    async def create_schedule(body: ScheduleBody) -> JSONResponse:  # type: ignore[valid-type]
        """CreateSchedule: creates it, or updates the schedule of that name to this definition."""
        request = jobs_pb2.CreateScheduleRequest(schedule=parse(body, jobs_pb2.Schedule()))
        return await answer(servicer.CreateSchedule, request)

    @app.get(
        "/v1/schedules",
        tags=["schedules"],
        dependencies=guarded,
        response_model=model("ListSchedulesResponse"),
    )
    async def list_schedules() -> JSONResponse:
        """ListSchedules: every schedule, by name."""
        return await answer(servicer.ListSchedules, jobs_pb2.ListSchedulesRequest())

    @app.get("/v1/schedules/{name}", tags=["schedules"], dependencies=guarded, response_model=ScheduleBody)
    async def get_schedule(name: ScheduleName) -> JSONResponse:
        """GetSchedule."""
        return await answer(servicer.GetSchedule, jobs_pb2.GetScheduleRequest(name=name))

    @app.put("/v1/schedules/{name}", tags=["schedules"], dependencies=with_body, response_model=put_response)
    async def update_schedule(name: ScheduleName, body: ScheduleBody) -> JSONResponse:  # type: ignore[valid-type]
        """UpdateSchedule: the body's name, if given, must be the path's."""
        schedule = parse(body, jobs_pb2.Schedule())
        if schedule.name and schedule.name != name:
            raise Aborted("INVALID_ARGUMENT", "name: differs from the path's", "name")
        schedule.name = name
        return await answer(servicer.UpdateSchedule, jobs_pb2.UpdateScheduleRequest(schedule=schedule))

    @app.delete(
        "/v1/schedules/{name}",
        tags=["schedules"],
        dependencies=guarded,
        response_model=model("DeleteScheduleResponse"),
    )
    async def delete_schedule(name: ScheduleName) -> JSONResponse:
        """DeleteSchedule: its jobs stay."""
        return await answer(servicer.DeleteSchedule, jobs_pb2.DeleteScheduleRequest(name=name))

    @app.post(
        "/v1/schedules/{name}:pause", tags=["schedules"], dependencies=guarded, response_model=ScheduleBody
    )
    async def pause_schedule(name: ScheduleName) -> JSONResponse:
        """PauseSchedule."""
        return await answer(servicer.PauseSchedule, jobs_pb2.PauseScheduleRequest(name=name))

    @app.post(
        "/v1/schedules/{name}:resume", tags=["schedules"], dependencies=guarded, response_model=ScheduleBody
    )
    async def resume_schedule(name: ScheduleName) -> JSONResponse:
        """ResumeSchedule: the next firing is the first after now."""
        return await answer(servicer.ResumeSchedule, jobs_pb2.ResumeScheduleRequest(name=name))

    @app.post(
        "/v1/schedules/{name}:trigger",
        tags=["schedules"],
        dependencies=guarded,
        response_model=model("SubmitJobResponse"),
    )
    async def trigger_schedule(name: ScheduleName) -> JSONResponse:
        """TriggerSchedule: fires now."""
        return await answer(servicer.TriggerSchedule, jobs_pb2.TriggerScheduleRequest(name=name))

    @app.get(
        "/v1/jobs/{job_id}:explain",
        tags=["jobs"],
        dependencies=guarded,
        response_model=model("ExplainJobResponse"),
    )
    async def explain_job(job_id: JobId) -> JSONResponse:
        """ExplainJob: why the job is not running, or what it is doing."""
        return await answer(servicer.ExplainJob, jobs_pb2.ExplainJobRequest(job_id=job_id))

    type_control = model("TypeControl")
    queue_control = model("QueueControl")

    @app.get(
        "/v1/flow-controls",
        tags=["flow control"],
        dependencies=guarded,
        response_model=model("FlowControls"),
    )
    async def get_flow_controls() -> JSONResponse:
        """GetFlowControls: every job type and queue with a limit or a pause."""
        return await answer(servicer.GetFlowControls, jobs_pb2.GetFlowControlsRequest())

    @app.put(
        "/v1/types/{type}/limit", tags=["flow control"], dependencies=with_body, response_model=type_control
    )
    async def set_type_limit(type: JobType, body: TypeLimitBody) -> JSONResponse:  # type: ignore[valid-type]
        """SetTypeLimit: without max_running, removes the limit. The body's type, if given, must be the path's."""
        request = parse(body, jobs_pb2.SetTypeLimitRequest())
        if request.type and request.type != type:
            raise Aborted("INVALID_ARGUMENT", "type: differs from the path's", "type")
        request.type = type
        return await answer(servicer.SetTypeLimit, request)

    @app.post(
        "/v1/types/{type}:pause", tags=["flow control"], dependencies=guarded, response_model=type_control
    )
    async def pause_type(type: JobType) -> JSONResponse:
        """PauseType: no job of the type starts until resumed; running ones finish."""
        return await answer(servicer.PauseType, jobs_pb2.PauseTypeRequest(type=type))

    @app.post(
        "/v1/types/{type}:resume", tags=["flow control"], dependencies=guarded, response_model=type_control
    )
    async def resume_type(type: JobType) -> JSONResponse:
        """ResumeType: its waiting jobs start."""
        return await answer(servicer.ResumeType, jobs_pb2.ResumeTypeRequest(type=type))

    @app.post(
        "/v1/queues/{queue}:pause", tags=["flow control"], dependencies=guarded, response_model=queue_control
    )
    async def pause_queue(queue: Queue) -> JSONResponse:
        """PauseQueue: no job of the queue starts until resumed; running ones finish."""
        request = jobs_pb2.PauseQueueRequest(queue=convert.priority_to_pb(queue))
        return await answer(servicer.PauseQueue, request)

    @app.post(
        "/v1/queues/{queue}:resume", tags=["flow control"], dependencies=guarded, response_model=queue_control
    )
    async def resume_queue(queue: Queue) -> JSONResponse:
        """ResumeQueue: its waiting jobs start."""
        request = jobs_pb2.ResumeQueueRequest(queue=convert.priority_to_pb(queue))
        return await answer(servicer.ResumeQueue, request)

    app.openapi = _without_validation_errors(app.openapi)  # type: ignore[method-assign]
    return app


def _without_validation_errors(openapi: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 for its own checks; they answer 400 here (`_invalid`), under `default`."""

    def document() -> dict[str, Any]:
        written = openapi()  # built once, then cached by FastAPI: the removal below happens once
        for item in written["paths"].values():
            for operation in item.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            written["components"]["schemas"].pop(name, None)
        return written

    return document


def _sse(event: jobs_pb2.JobEvent) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(to_json(event), separators=(",", ":")), event="job_event")


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's check of a body or query against the models: the first problem, as INVALID_ARGUMENT."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return error_response(Aborted("INVALID_ARGUMENT", f"the body is not JSON: {first['ctx']['error']}"))
    field = _field_path(first.get("loc", ())[1:]) or None
    message = f"{field}: {first['msg']}" if field else str(first["msg"])
    return error_response(Aborted("INVALID_ARGUMENT", message, field))


def _field_path(loc: Sequence[str | int]) -> str:
    """`("jobs", 3, "payload")` as `jobs[3].payload`, as the gRPC API names fields."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such path, a method a path does not take) in the same JSON body."""
    code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
    return error_response(Aborted(code, str(exc.detail), http_status=exc.status_code))


class EmbeddedServer(uvicorn.Server):
    """Uvicorn on the gateway's event loop: the gateway handles the signals and sets `should_exit`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(
    app: ASGIApp, address: str, max_bytes: int, max_calls: int, tls: dict[str, Any]
) -> EmbeddedServer:
    """The server for `app` on `address`, within `Limits`; on stop, open streams get a few seconds."""
    host, port = split_address(address)
    config = uvicorn.Config(
        Limits(app, max_bytes, max_calls),
        host=host,
        port=int(port),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=3,
        **tls,
    )
    return EmbeddedServer(config)


def openapi_document() -> dict[str, Any]:
    """The document the gateway serves at /openapi.json (scripts/gen-openapi commits it under docs/)."""
    never_called = cast(JobServicer, object())  # the routes are only described here
    return http_app(never_called, auth=None).openapi()


if __name__ == "__main__":
    print(json.dumps(openapi_document(), indent=2))
