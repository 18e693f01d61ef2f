"""The one tree of taskapp errors. Each names the gRPC status code the gateway answers with."""

from __future__ import annotations


class TaskappError(Exception):
    """Root of every error taskapp raises on purpose."""

    #: Name of the `grpc.StatusCode` member the gateway maps this error to (taskapp does not import grpc).
    grpc_code = "INTERNAL"


class FieldError(TaskappError):
    """A request field the service refuses; the message starts with the field's path (`jobs[3].payload`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidArgument(FieldError):
    """Raised when a request field is malformed."""

    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(FieldError):
    """Raised when a payload is over the size limit."""

    grpc_code = "RESOURCE_EXHAUSTED"


class JobNotFound(TaskappError):
    """Raised when no job has the given id."""

    grpc_code = "NOT_FOUND"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class ScheduleNotFound(TaskappError):
    """Raised when no schedule has the given name."""

    grpc_code = "NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} not found")
        self.name = name


class JobAlreadyExists(FieldError):
    """Raised when a job_id is reused with a different request; `field` names it within a batch."""

    grpc_code = "ALREADY_EXISTS"

    def __init__(self, job_id: str, field: str = "job_id") -> None:
        super().__init__(field, f"job {job_id!r} already exists with a different request")
        self.job_id = job_id


class JobNotRetryable(TaskappError):
    """Raised when RetryJob names a job that is not FAILED, DEAD_LETTER or CANCELLED."""

    grpc_code = "FAILED_PRECONDITION"

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(
            f"job {job_id!r} is {state}: only FAILED, DEAD_LETTER or CANCELLED jobs can be retried"
        )


class Unavailable(TaskappError):
    """Raised when the database or the broker cannot be reached; nothing was half-done."""

    grpc_code = "UNAVAILABLE"


class StoreUnavailable(Unavailable):
    """Raised when the job database cannot be reached."""


class BrokerUnavailable(Unavailable):
    """Raised when the message broker cannot be reached."""


class HandlerModuleError(TaskappError):
    """Raised when a module listed in TASKAPP_HANDLER_MODULES cannot be imported."""


class PermanentError(TaskappError):
    """Raised by a handler when retrying cannot help (e.g. it rejects its payload): the job fails at once."""
