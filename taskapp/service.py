"""Submit, get, cancel and list jobs: validation, state changes and publishing, free of any transport."""

from __future__ import annotations

import base64
import binascii
import builtins
import dataclasses
import difflib
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pydantic

from taskapp import flow
from taskapp.broker_stats import BrokerStats
from taskapp.clock import utcnow
from taskapp.errors import (
    BrokerUnavailable,
    InvalidArgument,
    JobAlreadyExists,
    JobNotFound,
    JobNotRetryable,
    PayloadTooLarge,
)
from taskapp.explain import Explanation, explain
from taskapp.faults import AFTER_COMMIT_BEFORE_PUBLISH, fault_point
from taskapp.jobs import (
    CANCELLABLE_STATES,
    RETRYABLE_BY_REQUEST,
    BulkOutcome,
    CancelOutcome,
    FlowControl,
    Job,
    JobEvent,
    JobFilter,
    JobPage,
    JobState,
    LogLine,
    NewJob,
    Priority,
    QueueStats,
    SentMessage,
    SubmitOutcome,
    SubmitRequest,
    key_scope,
    queue_scope,
    type_scope,
)
from taskapp.overview import FORGET_WORKERS_AFTER, answering
from taskapp.published_marks import PublishedMarks, mark_published
from taskapp.publisher import Publisher
from taskapp.registry import TYPE_NAME, Handler, HandlerRegistry
from taskapp.store.port import JobStore

JOB_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_PAYLOAD_BYTES = 256 * 1024
#: Objects and arrays nested in a payload, the payload itself being the first. Protobuf parses a payload a few
#: levels deeper; this limit holds for every transport.
MAX_PAYLOAD_DEPTH = 32
#: The largest position a page token may name: PostgreSQL's BIGINT.
MAX_SEQ = 2**63 - 1
MAX_ATTEMPTS_RANGE = (1, 100)
TIMEOUT_SECONDS_RANGE = (1, 86_400)
MAX_SCHEDULE_AHEAD = timedelta(days=365)
#: Jobs one SubmitJobs call may carry.
MAX_JOBS_PER_SUBMIT = 1_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
#: Jobs CancelJobs and RetryJobs read, and act on, at a time.
BULK_BATCH = 500
MAX_LABELS = 20
#: A label key: 1-63 characters, a letter or digit first (Kubernetes' rule, with dots and slashes).
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
MAX_LABEL_VALUE = 255
#: A unique key or a concurrency key (`taskapp.flow`): 1-255 printable characters.
KEY = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,254}$")
#: A unique key's window: up to a year, as far as a job can be scheduled.
MAX_UNIQUE_FOR = timedelta(days=365)
#: Jobs of one key, or of one type, running at once; starts of a type per rate interval.
CONCURRENCY_LIMIT_RANGE = (1, 100_000)
MIN_RATE_SECONDS, MAX_RATE_SECONDS = 0.001, 86_400.0


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """At most `MAX_LABELS`, keys of `LABEL_KEY`, values of at most `MAX_LABEL_VALUE` printable characters."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument("labels", f"must hold at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise InvalidArgument("labels", f"key {key[:80]!r} must match {LABEL_KEY.pattern}")
        if len(value) > MAX_LABEL_VALUE or not value.isprintable():
            raise InvalidArgument(f"labels.{key}", f"must be at most {MAX_LABEL_VALUE} printable characters")
    return labels


def _check_range(field: str, value: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")
    return value


def _check_key(field: str, key: str) -> str:
    """A unique or concurrency key: what Redis, SQL and a log line all carry as it is."""
    if not KEY.match(key):
        raise InvalidArgument(field, "must be 1-255 printable ASCII characters, not starting with a space")
    return key


def _check_rate(rate: int | None, rate_seconds: float) -> None:
    if rate is not None:
        _check_range("rate", rate, CONCURRENCY_LIMIT_RANGE)
    if not MIN_RATE_SECONDS <= rate_seconds <= MAX_RATE_SECONDS:
        raise InvalidArgument("rate_interval", f"must be from 1 ms to {MAX_RATE_SECONDS:.0f} s")


#: One encoder for all: `json.dumps` with these options builds a new one on every call (~40 % of its cost).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def _check_payload(value: Any, field: str = "payload", depth: int = 1) -> None:
    """Refuse what JSON or PostgreSQL's JSONB cannot hold (NaN and infinities, a NUL character) and nesting
    past `MAX_PAYLOAD_DEPTH`, naming where it is. One bad job must never fail a batch it is written with."""
    if isinstance(value, dict | list) and depth > MAX_PAYLOAD_DEPTH:
        raise InvalidArgument(field, f"is nested more than {MAX_PAYLOAD_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise InvalidArgument(field, "has a key with a NUL character (U+0000)")
            _check_payload(item, f"{field}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_payload(item, f"{field}[{index}]", depth + 1)
    elif isinstance(value, str) and "\x00" in value:
        raise InvalidArgument(field, "must not contain a NUL character (U+0000)")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(field, "must be a finite number (JSON has no NaN or Infinity)")


def _pydantic_field(error: Any) -> str:
    return ".".join(["payload", *(str(part) for part in error["loc"])])


class JobService:
    """The use cases behind the gRPC API. The store and the publisher are ports, so tests can pass fakes."""

    def __init__(
        self,
        store: JobStore,
        publisher: Publisher,
        registry: HandlerRegistry,
        *,
        broker_stats: BrokerStats | None = None,
        published_marks: PublishedMarks | None = None,
        new_job_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.registry = registry
        self.broker_stats = broker_stats
        self.published_marks = published_marks
        self._new_job_id = new_job_id
        self._clock = clock

    def validate(self, request: SubmitRequest) -> NewJob:
        """Check every field against the limits of docs/api.md and the handler's schema; resolve defaults."""
        if request.job_id is not None:
            self.check_job_id(request.job_id)
        if not request.type:
            raise InvalidArgument("type", "is required")
        handler = self.registry.get(request.type)
        if handler is None:
            raise InvalidArgument("type", self._unknown_type(request.type))
        payload = request.payload if request.payload is not None else {}
        _check_payload(payload)
        encoded = _canonical_json(payload)
        if len(encoded.encode()) > MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(
                "payload", f"{len(encoded.encode())} bytes encoded, the limit is {MAX_PAYLOAD_BYTES}"
            )
        try:
            handler.schema.model_validate(payload)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidArgument(_pydantic_field(first), first["msg"]) from None
        max_attempts = _check_range(
            "max_attempts",
            handler.max_attempts if request.max_attempts is None else request.max_attempts,
            MAX_ATTEMPTS_RANGE,
        )
        timeout_seconds = _check_range(
            "timeout_seconds",
            handler.timeout_seconds if request.timeout_seconds is None else request.timeout_seconds,
            TIMEOUT_SECONDS_RANGE,
        )
        if request.run_at is not None and request.run_at > self._clock() + MAX_SCHEDULE_AHEAD:
            raise InvalidArgument("run_at", f"must be at most {MAX_SCHEDULE_AHEAD.days} days ahead")
        labels = check_labels(request.labels or {})
        unique_key, unique_for = self._unique_key(request, handler, payload)
        concurrency_key, concurrency_limit = self._concurrency(request, handler, payload)
        priority = request.priority or Priority.DEFAULT
        identity: list[Any] = [request.type, priority.value, payload, max_attempts, timeout_seconds]
        if request.run_at is not None:
            identity.append(request.run_at.isoformat())
        if labels:  # only then: the fingerprints of jobs from before labels stay what they were
            identity.append({"labels": labels})
        if unique_key is not None:
            identity.append({"unique": [unique_key, unique_for.total_seconds() if unique_for else None]})
        if concurrency_key:
            identity.append({"concurrency": [concurrency_key, concurrency_limit]})
        fingerprint = hashlib.sha256(_canonical_json(identity).encode()).hexdigest()
        return NewJob(
            job_id=request.job_id or self._new_job_id(),
            type=request.type,
            priority=priority,
            payload=payload,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            fingerprint=fingerprint,
            run_at=request.run_at,
            labels=labels,
            unique_key=unique_key,
            unique_for=unique_for,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )

    @staticmethod
    def _concurrency(request: SubmitRequest, handler: Handler, payload: dict[str, Any]) -> tuple[str, int]:
        """The request's concurrency key and limit (the type's default limit if it gives none; 0: no limit of its
        own), or the job type's default key (its `concurrency_by` payload fields, with the type; the type alone
        without fields) and limit; ("", 0) for none."""
        limit = request.concurrency_limit
        if limit is not None:
            _check_range("concurrency_limit", limit, CONCURRENCY_LIMIT_RANGE)
        if request.concurrency_key is not None:
            _check_key("concurrency_key", request.concurrency_key)
            # Without a limit, the key only takes turns with the others under its type's limit.
            return request.concurrency_key, limit or handler.concurrency_limit or 0
        if handler.concurrency_limit is None:
            if limit is not None:
                raise InvalidArgument(
                    "concurrency_key",
                    "is required with a concurrency_limit (this job type declares no default)",
                )
            return "", 0
        values = {name: payload.get(name) for name in handler.concurrency_by}
        key = f"{request.type}:{_canonical_json(values)}" if values else request.type
        if len(key) > 255:
            key = f"{request.type}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"
        return key, limit or handler.concurrency_limit

    @staticmethod
    def _unique_key(
        request: SubmitRequest, handler: Handler, payload: dict[str, Any]
    ) -> tuple[str | None, timedelta | None]:
        """The request's unique key and window, or the job type's default key (its `unique_by` payload fields,
        hashed with the type) and window."""
        unique_for = request.unique_for
        if unique_for is not None and not timedelta(0) < unique_for <= MAX_UNIQUE_FOR:
            raise InvalidArgument("unique_for", f"must be more than 0 and at most {MAX_UNIQUE_FOR.days} days")
        if request.unique_key is not None:
            _check_key("unique_key", request.unique_key)
            return request.unique_key, unique_for
        if unique_for is not None and not handler.unique_by:
            raise InvalidArgument("unique_for", "needs a unique_key (this job type declares no default key)")
        if not handler.unique_by:
            return None, None
        values = _canonical_json([request.type, {name: payload.get(name) for name in handler.unique_by}])
        key = f"{request.type}:{hashlib.sha256(values.encode()).hexdigest()[:32]}"
        default_for = timedelta(seconds=handler.unique_for) if handler.unique_for else None
        return key, unique_for or default_for

    def _unknown_type(self, type: str) -> str:
        """Name the types there are, and the likely one, so a typo is fixed without reading the code."""
        known = sorted(handler.type for handler in self.registry)
        problem = f"unknown job type {type!r} (known: {', '.join(known)})"
        close = difflib.get_close_matches(type, known, n=1)
        return f"{problem}; did you mean {close[0]!r}?" if close else problem

    @staticmethod
    def check_job_id(job_id: str) -> str:
        if not JOB_ID.match(job_id):
            raise InvalidArgument("job_id", "must be 1-128 characters of [A-Za-z0-9._:-]")
        return job_id

    def submit(self, request: SubmitRequest) -> SubmitOutcome:
        """Commit the job row, then publish it. A repeated job_id returns the existing job if the request matches.

        If publishing fails the row is removed again and the caller gets UNAVAILABLE: no half-created job. If
        this process dies between the commit and the publish, the row says a message is owed and the scheduler
        sends it (the outbox). A SCHEDULED job is published by the scheduler when it is due.
        """
        [outcome] = self.submit_validated([self.validate(request)])
        if isinstance(outcome, JobAlreadyExists):
            raise outcome
        return outcome

    def submit_validated(self, news: Sequence[NewJob]) -> builtins.list[SubmitOutcome | JobAlreadyExists]:
        """`submit` for jobs of independent callers, written together: one INSERT, one publish batch, one
        UPDATE, however many there are. Each caller gets its own outcome; a job_id that comes twice is created
        once, the second caller getting it with `created` false (or ALREADY_EXISTS if the requests differ). A
        database or broker failure fails them all, with nothing half-created."""
        first: dict[str, NewJob] = {}
        for new in news:
            first.setdefault(new.job_id, new)
        written = dict(zip(first, self._create_and_publish(list(first.values())), strict=True))
        outcomes: builtins.list[SubmitOutcome | JobAlreadyExists] = []
        for new in news:
            outcome = written[new.job_id]
            if outcome.job.job_id == new.job_id and outcome.job.fingerprint != new.fingerprint:
                outcomes.append(JobAlreadyExists(new.job_id))
            elif first[new.job_id] is new:
                outcomes.append(outcome)  # created, or the job holding its id or its unique key
            else:
                outcomes.append(SubmitOutcome(job=outcome.job, created=False))
        return outcomes

    def _create_and_publish(
        self, news: Sequence[NewJob], check: Callable[[builtins.list[tuple[Job, bool]]], None] | None = None
    ) -> builtins.list[SubmitOutcome]:
        """Insert the jobs (existing ids are left as they are), run `check` on the result, then publish the new
        QUEUED ones together and mark them published. If publishing fails, the new rows are removed again."""
        results = self.store.create_many(news, self._clock())
        committed_at = self._clock()
        if check is not None:
            check(results)
        fresh = [job for job, created in results if created and job.state is JobState.QUEUED]
        if fresh:
            fault_point(AFTER_COMMIT_BEFORE_PUBLISH)
        try:
            self.publisher.publish_many(fresh)
        except BrokerUnavailable:
            self.store.discard_many([job.job_id for job, created in results if created])
            raise
        published_at = self._clock()
        if fresh:
            self._mark_published(fresh)
        return [
            SubmitOutcome(
                job=job,
                created=created,
                committed_at=committed_at if created else None,
                published_at=published_at if created and job.state is JobState.QUEUED else None,
            )
            for job, created in results
        ]

    def _mark_published(self, jobs: Sequence[Job]) -> None:
        """The jobs are committed and their messages sent; if this write is lost the scheduler sends harmless
        duplicates, so the caller still gets its answer. With `published_marks`, the mark is left to it."""
        messages = [SentMessage.of(job) for job in jobs]
        if self.published_marks is not None:
            self.published_marks.add(messages)
        else:
            mark_published(self.store, messages, self._clock())

    def submit_many(self, requests: Sequence[SubmitRequest]) -> builtins.list[SubmitOutcome]:
        """SubmitJob for up to 1,000 jobs: every one is validated before anything is written (the error names
        `jobs[<index>]`), then all are written in one transaction and published together. If publishing fails,
        the batch's new jobs are removed again and the caller gets UNAVAILABLE."""
        if not 1 <= len(requests) <= MAX_JOBS_PER_SUBMIT:
            raise InvalidArgument("jobs", f"must hold 1 to {MAX_JOBS_PER_SUBMIT} jobs, got {len(requests)}")
        news: list[NewJob] = []
        first_index: dict[str, int] = {}
        for index, request in enumerate(requests):
            try:
                new = self.validate(request)
            except InvalidArgument as exc:
                raise InvalidArgument(f"jobs[{index}].{exc.field}", exc.problem) from None
            except PayloadTooLarge as exc:
                raise PayloadTooLarge(f"jobs[{index}].{exc.field}", exc.problem) from None
            if new.job_id in first_index:
                raise InvalidArgument(
                    f"jobs[{index}].job_id", f"repeats jobs[{first_index[new.job_id]}].job_id"
                )
            first_index[new.job_id] = index
            news.append(new)

        def refuse_conflicts(results: builtins.list[tuple[Job, bool]]) -> None:
            for index, ((job, created), new) in enumerate(zip(results, news, strict=True)):
                if not created and job.job_id == new.job_id and job.fingerprint != new.fingerprint:
                    raise JobAlreadyExists(new.job_id, f"jobs[{index}].job_id")

        return self._create_and_publish(news, check=refuse_conflicts)

    def get(self, job_id: str) -> Job:
        job = self.store.get(self.check_job_id(job_id))
        if job is None:
            raise JobNotFound(job_id)
        return job

    def explain(self, job_id: str, beat_seconds: float) -> Explanation:
        """Why the job is not running, or what it is doing (`taskapp.explain`); workers beat every
        `beat_seconds`."""
        job = self.get(job_id)
        now = self._clock()
        workers = answering(self.store.workers(now - FORGET_WORKERS_AFTER), now, beat_seconds)
        return explain(self.store, job, now, workers)

    def set_type_limit(
        self, type: str, max_running: int | None, rate: int | None = None, rate_seconds: float = 1.0
    ) -> FlowControl:
        """At most `max_running` jobs of `type` at once, and at most `rate` starts per `rate_seconds` (None: no
        such limit); jobs waiting for it start at once if it leaves them room. A pause is kept."""
        if max_running is not None:
            _check_range("max_running", max_running, CONCURRENCY_LIMIT_RANGE)
        _check_rate(rate, rate_seconds)
        control = dataclasses.replace(
            self._type_control(type),
            max_running=max_running,
            rate=rate,
            rate_seconds=rate_seconds if rate is not None else 1.0,
            next_start_at=None,
        )
        self.store.put_flow_control(control)
        flow.let_out(self.store, self.publisher, type, self._clock)
        return control

    def set_key_rate(self, key: str, rate: int | None, rate_seconds: float = 1.0) -> FlowControl:
        """At most `rate` starts per `rate_seconds` of the jobs with concurrency key `key`, whatever their type
        (None: no rate)."""
        _check_key("key", key)
        _check_rate(rate, rate_seconds)
        control = FlowControl(
            key_scope(key), rate=rate, rate_seconds=rate_seconds if rate is not None else 1.0
        )
        self.store.put_flow_control(control)
        flow.let_out_everywhere(self.store, self.publisher, self._clock)
        return control

    def pause_type(self, type: str, paused: bool) -> FlowControl:
        """Start no job of `type` until resumed (running ones finish); on resume its waiting jobs start."""
        control = dataclasses.replace(self._type_control(type), paused=paused)
        self.store.put_flow_control(control)
        if not paused:
            flow.let_out(self.store, self.publisher, type, self._clock)
        return control

    def pause_queue(self, priority: Priority, paused: bool) -> FlowControl:
        """Start no job of the `priority` queue until resumed (running ones finish); on resume they start."""
        control = FlowControl(queue_scope(priority), paused=paused)
        self.store.put_flow_control(control)
        if not paused:
            flow.let_out_everywhere(self.store, self.publisher, self._clock)
        return control

    def flow_controls(self) -> builtins.list[FlowControl]:
        return self.store.flow_controls()

    def _type_control(self, type: str) -> FlowControl:
        if self.registry.get(type) is None:
            raise InvalidArgument("type", self._unknown_type(type))
        scope = type_scope(type)
        return next(iter(self.store.flow_controls([scope])), FlowControl(scope))

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel in SQL first (workers check it at claim time), then stop a running job on its worker."""
        outcome = self.store.cancel(self.check_job_id(job_id), self._clock())
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome.cancelled and outcome.task_id:
            self.publisher.terminate(outcome.task_id)
        return outcome

    def retry(self, job_id: str) -> Job:
        """Run a FAILED, DEAD_LETTER or CANCELLED job again with fresh attempts, out of the dead letters."""
        requeued = self.store.requeue(self.check_job_id(job_id), self._clock())
        if requeued is None:
            raise JobNotRetryable(job_id, self.get(job_id).state.value)
        job, previous = requeued
        try:
            self.publisher.publish(job)
        except BrokerUnavailable:
            self.store.unqueue(job_id, previous, self._clock())
            raise
        self._mark_published([job])
        self.publisher.remove_dead_letters({job_id})
        return job

    def cancel_many(self, filter: JobFilter, *, dry_run: bool = False, limit: int = 0) -> BulkOutcome:
        """`cancel` for each job `filter` matches that is not finished, at most `limit` (0: all)."""
        return self._act_on_matching(filter, CANCELLABLE_STATES, self.cancel_each, dry_run, limit)

    def retry_many(self, filter: JobFilter, *, dry_run: bool = False, limit: int = 0) -> BulkOutcome:
        """`retry` for each FAILED, DEAD_LETTER or CANCELLED job `filter` matches, at most `limit` (0: all)."""
        return self._act_on_matching(filter, RETRYABLE_BY_REQUEST, self._retry_batch, dry_run, limit)

    def _act_on_matching(
        self,
        filter: JobFilter,
        allowed: frozenset[JobState],
        act: Callable[[builtins.list[str]], int],
        dry_run: bool,
        limit: int,
    ) -> BulkOutcome:
        """Read the matching jobs a page at a time, newest first (jobs submitted meanwhile are not among them),
        and act on those in an `allowed` state a page at a time, in short transactions (a cancel per job, a
        retry per page, with one publish): no long transaction holds up submits."""
        if filter == JobFilter():
            raise InvalidArgument("filter", "give at least one filter (state, type, labels, ...)")
        if limit < 0:
            raise InvalidArgument("limit", f"must not be negative, got {limit}")
        self._check_filter(filter)
        acted_on = skipped = 0
        before_seq: int | None = None
        while page := self.store.list(filter, BULK_BATCH, before_seq):
            before_seq = page[-1].seq
            wanted = [job for job in page if job.state in allowed]
            skipped += len(page) - len(wanted)
            if limit:
                wanted = wanted[: limit - acted_on]
            done = len(wanted) if dry_run else act([job.job_id for job in wanted])
            skipped += len(wanted) - done  # moved on between the read and the change
            acted_on += done
            if limit and acted_on >= limit:
                break
        return BulkOutcome(acted_on=acted_on, skipped=skipped)

    def cancel_each(self, job_ids: Sequence[str]) -> int:
        """`cancel` for each of `job_ids` that is not finished (the console's selection): how many it cancelled."""
        cancelled = 0
        for job_id in job_ids:
            outcome = self.store.cancel(self.check_job_id(job_id), self._clock())
            if outcome is not None and outcome.cancelled:
                cancelled += 1
                if outcome.task_id:
                    self.publisher.terminate(outcome.task_id)
        return cancelled

    def retry_each(self, job_ids: Sequence[str]) -> int:
        """`retry` for each of `job_ids` that is FAILED, DEAD_LETTER or CANCELLED, `BULK_BATCH` per transaction
        and publish (the console's selection, or a group of dead letters): how many it queued again. Were the
        broker down, the outbox (the scheduler) publishes them once it is back; the call answers UNAVAILABLE."""
        for job_id in job_ids:
            self.check_job_id(job_id)
        queued = 0
        for start in range(0, len(job_ids), BULK_BATCH):
            queued += self._retry_batch(job_ids[start : start + BULK_BATCH])
        return queued

    def _retry_batch(self, job_ids: Sequence[str]) -> int:
        """Queue the jobs again in one transaction, then publish them together."""
        requeued = self.store.requeue_many(job_ids, self._clock())
        queued = [job for job, _ in requeued]
        if queued:
            self.publisher.publish_many(queued)
            self._mark_published(queued)
            dead = {job.job_id for job, previous in requeued if previous is JobState.DEAD_LETTER}
            if dead:
                self.publisher.remove_dead_letters(dead)
        return len(queued)

    def latest_event(self, job_id: str) -> JobEvent:
        """The job's current state, as the event that put it there (WatchJob's first event)."""
        event = self.store.latest_event(self.check_job_id(job_id))
        if event is None:
            raise JobNotFound(job_id)
        return event

    def events_after(self, job_id: str, after_seq: int) -> builtins.list[JobEvent]:
        return self.store.events_after(job_id, after_seq)

    def logs(self, job_id: str) -> builtins.list[LogLine]:
        self.get(job_id)
        return self.store.logs(job_id)

    def queue_stats(self) -> QueueStats:
        if self.broker_stats is None:
            raise BrokerUnavailable("broker statistics are not available here")
        return QueueStats(
            depths=self.broker_stats.depths(),
            dead_letter=self.broker_stats.dead_letters(),
            scheduled=self.store.count_scheduled(),
            workers=self.broker_stats.workers(),
        )

    @staticmethod
    def _check_filter(filter: JobFilter) -> None:
        if filter.type is not None and not TYPE_NAME.match(filter.type):
            # No job can have it, and PostgreSQL refuses some (a NUL) outright.
            raise InvalidArgument("type", f"is not a job type name ({TYPE_NAME.pattern})")
        check_labels(filter.labels)
        if filter.job_id_prefix is not None and not JOB_ID.match(filter.job_id_prefix):
            raise InvalidArgument("job_id_prefix", "must be 1-128 characters of [A-Za-z0-9._:-]")
        if filter.created_after and filter.created_before and filter.created_after >= filter.created_before:
            raise InvalidArgument("created_before", "must be later than created_after")

    def list(self, filter: JobFilter, page_size: int = 0, page_token: str = "") -> JobPage:
        """One page, newest first. Page size 0 means the default; above the maximum it is capped (AIP-158)."""
        if page_size < 0:
            raise InvalidArgument("page_size", f"must not be negative, got {page_size}")
        self._check_filter(filter)
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before_seq = _decode_page_token(page_token, filter) if page_token else None
        jobs = self.store.list(filter, limit + 1, before_seq)
        if len(jobs) <= limit:
            return JobPage(jobs=jobs, next_page_token="")
        page = jobs[:limit]
        return JobPage(jobs=page, next_page_token=_encode_page_token(page[-1].seq, filter))


def _filter_key(filter: JobFilter) -> str:
    parts: list[Any] = [filter.state or "", filter.priority or "", filter.type or ""]
    created = [stamp.isoformat() if stamp else "" for stamp in (filter.created_after, filter.created_before)]
    if filter.labels or any(created) or filter.job_id_prefix:
        parts += [filter.labels, *created, filter.job_id_prefix or ""]
    return hashlib.sha256(_canonical_json(parts).encode()).hexdigest()[:16]


def _encode_page_token(last_seq: int, filter: JobFilter) -> str:
    raw = _canonical_json({"after": last_seq, "filter": _filter_key(filter)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, filter: JobFilter) -> int:
    """The page token names the last job seen and the filters it was made for; anything else is rejected."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after = data["after"]
        made_for = data["filter"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidArgument("page_token", "is not a token this service issued") from None
    if not isinstance(after, int) or isinstance(after, bool) or not 1 <= after <= MAX_SEQ:
        raise InvalidArgument("page_token", "is not a token this service issued")
    if made_for != _filter_key(filter):
        raise InvalidArgument("page_token", "was issued for different filters")
    return after
