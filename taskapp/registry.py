"""Job types: the `@handler` decorator, the registry it fills, and loading handler modules.

The registry is plain Python: the gateway reads it to validate payloads, the worker turns each entry into a
Celery task (`taskapp.tasks`). Neither side needs the other. Modules of job types are found two ways: the
`taskapp.handlers` entry points of installed packages (taskapp's own built-in types are declared so in
pyproject.toml), and the modules named in `TASKAPP_HANDLER_MODULES`.
"""

from __future__ import annotations

import builtins
import importlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel

from taskapp.errors import HandlerModuleError

#: Job type names become Celery task names (`handlers.<type>`): keep them plain.
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: The entry point group under which packages declare modules of job types.
ENTRY_POINT_GROUP = "taskapp.handlers"

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT_SECONDS = 300

PayloadT = TypeVar("PayloadT", bound=BaseModel)


def _ignore_progress(percent: int, message: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler knows about the run it is in. What it logs through `logger` is kept per attempt
    (GetJobLogs); what it reports with `report_progress` shows in GetJob and WatchJob."""

    job_id: str
    attempt: int
    logger: logging.Logger
    progress_sink: Callable[[int, str], None] = field(default=_ignore_progress, repr=False)

    def report_progress(self, percent: int, message: str = "") -> None:
        """`percent` from 0 to 100; `message` is cut to 200 characters."""
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be between 0 and 100, got {percent}")
        self.progress_sink(percent, message[:200])


@dataclass(frozen=True, slots=True)
class Handler:
    type: str
    func: Callable[[Any, JobContext], Any]
    #: Pydantic model the payload must match; checked at the gateway and again by the worker.
    schema: builtins.type[BaseModel]
    #: Exceptions worth another attempt; anything else fails the job.
    retry_on: tuple[builtins.type[BaseException], ...]
    max_attempts: int
    timeout_seconds: int
    #: Payload fields that make a job's default unique key: a job with the same values is not created while
    #: one holds the key (for `unique_for` seconds, or without it until that job has finished).
    unique_by: tuple[str, ...] = ()
    unique_for: int | None = None
    #: Payload fields that make a job's default concurrency key (`taskapp.flow`): at most `concurrency_limit`
    #: jobs with the same values run at once across every worker. A limit without fields limits the whole type.
    concurrency_by: tuple[str, ...] = ()
    concurrency_limit: int | None = None


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def handler(
        self,
        type: str,
        *,
        schema: type[PayloadT],
        retry_on: tuple[type[BaseException], ...] = (),
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
        unique_by: tuple[str, ...] = (),
        unique_for: int | None = None,
        concurrency_by: tuple[str, ...] = (),
        concurrency_limit: int | None = None,
    ) -> Callable[[Callable[[PayloadT, JobContext], Any]], Callable[[PayloadT, JobContext], Any]]:
        """Register the decorated function as the handler of job type `type`."""
        if not TYPE_NAME.match(type):
            raise ValueError(f"job type {type!r} must match {TYPE_NAME.pattern}")
        if concurrency_by and concurrency_limit is None:
            raise ValueError(f"job type {type!r}: concurrency_by needs a concurrency_limit")

        def register(
            func: Callable[[PayloadT, JobContext], Any],
        ) -> Callable[[PayloadT, JobContext], Any]:
            existing = self._handlers.get(type)
            if existing is not None and existing.func is not func:
                raise ValueError(f"job type {type!r} is already registered by {existing.func!r}")
            self._handlers[type] = Handler(
                type=type,
                func=func,
                schema=schema,
                retry_on=retry_on,
                max_attempts=max_attempts,
                timeout_seconds=timeout_seconds,
                unique_by=unique_by,
                unique_for=unique_for,
                concurrency_by=concurrency_by,
                concurrency_limit=concurrency_limit,
            )
            return func

        return register

    def get(self, type: str) -> Handler | None:
        return self._handlers.get(type)

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._handlers.values()))

    def __len__(self) -> int:
        return len(self._handlers)


#: The registry `@handler` fills; handler modules import `handler` from here.
registry = HandlerRegistry()
handler = registry.handler


def handler_modules(extra_modules: Iterable[str] = ()) -> list[str]:
    """The modules of job types: those installed packages declare, in the order of their names, then
    `extra_modules`."""
    declared = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    return [point.value for point in declared] + list(extra_modules)


def load_handlers(extra_modules: Iterable[str] = ()) -> HandlerRegistry:
    """Import every module of job types, so their `@handler`s register, and return the registry."""
    for name in handler_modules(extra_modules):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise HandlerModuleError(f"cannot import handler module {name!r}: {exc}") from exc
    return registry
