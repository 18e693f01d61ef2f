"""JobService rules on in-memory ports: validation, idempotency, cancel, paging, no half-created jobs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from taskapp.clock import utcnow
from taskapp.errors import (
    BrokerUnavailable,
    InvalidArgument,
    JobAlreadyExists,
    JobNotFound,
    JobNotRetryable,
    PayloadTooLarge,
)
from taskapp.jobs import JobFilter, JobState, Priority, SubmitRequest
from taskapp.registry import HandlerRegistry, load_handlers
from taskapp.service import JobService
from taskapp.store.memory import InMemoryJobStore
from taskapp.testing import InMemoryPublisher


@pytest.fixture
def store() -> InMemoryJobStore:
    return InMemoryJobStore()


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
def service(store: InMemoryJobStore, publisher: InMemoryPublisher) -> JobService:
    return JobService(store, publisher, load_handlers())


def test_submit_resolves_defaults_and_publishes(service: JobService, publisher: InMemoryPublisher) -> None:
    outcome = service.submit(SubmitRequest(type="echo", payload={"a": 1}))
    assert outcome.created
    job = outcome.job
    assert (job.state, job.priority, job.max_attempts, job.timeout_seconds) == (
        JobState.QUEUED,
        Priority.DEFAULT,
        3,
        300,
    )
    assert len(job.job_id) == 36  # a UUID was made
    assert [p.job_id for p in publisher.published] == [job.job_id]


def test_same_id_same_request_returns_existing(service: JobService, publisher: InMemoryPublisher) -> None:
    request = SubmitRequest(job_id="order-1", type="echo", payload={"a": 1}, priority=Priority.HIGH)
    first = service.submit(request)
    second = service.submit(request)
    assert first.created and not second.created
    assert second.job.job_id == "order-1"
    assert len(publisher.published) == 1


def test_same_id_with_defaults_spelled_out_is_the_same_request(service: JobService) -> None:
    service.submit(SubmitRequest(job_id="j", type="noop"))
    again = service.submit(
        SubmitRequest(job_id="j", type="noop", priority=Priority.DEFAULT, payload={}, max_attempts=3)
    )
    assert not again.created


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"a": 2}},
        {"priority": Priority.LOW},
        {"max_attempts": 5},
        {"timeout_seconds": 10},
        {"type": "noop"},
        {"run_at": utcnow() + timedelta(hours=1)},
        {"labels": {"env": "prod"}},
        {"unique_key": "k"},
        {"concurrency_key": "tenant-1"},
        {"concurrency_key": "tenant-1", "concurrency_limit": 2},
    ],
)
def test_same_id_different_request_is_already_exists(service: JobService, change: dict) -> None:
    base: dict[str, Any] = {"job_id": "dup", "type": "echo", "payload": {"a": 1}}
    service.submit(SubmitRequest(**base))
    with pytest.raises(JobAlreadyExists, match="job_id"):
        service.submit(SubmitRequest(**{**base, **change}))


@pytest.mark.parametrize(
    ("request_fields", "error", "field"),
    [
        ({"type": ""}, InvalidArgument, "type"),
        ({"type": "no_such_type"}, InvalidArgument, "type"),
        ({"type": "echo", "job_id": "has space"}, InvalidArgument, "job_id"),
        ({"type": "echo", "job_id": "x" * 129}, InvalidArgument, "job_id"),
        ({"type": "echo", "job_id": "ünïcode"}, InvalidArgument, "job_id"),
        ({"type": "sleep", "payload": {}}, InvalidArgument, "payload.seconds"),
        ({"type": "sleep", "payload": {"seconds": "soon"}}, InvalidArgument, "payload.seconds"),
        ({"type": "sleep", "payload": {"seconds": 1, "extra": 1}}, InvalidArgument, "payload.extra"),
        ({"type": "echo", "max_attempts": 0}, InvalidArgument, "max_attempts"),
        ({"type": "echo", "max_attempts": 101}, InvalidArgument, "max_attempts"),
        ({"type": "echo", "max_attempts": -1}, InvalidArgument, "max_attempts"),
        ({"type": "echo", "timeout_seconds": 0}, InvalidArgument, "timeout_seconds"),
        ({"type": "echo", "timeout_seconds": 86_401}, InvalidArgument, "timeout_seconds"),
        ({"type": "echo", "payload": {"blob": "x" * (256 * 1024)}}, PayloadTooLarge, "payload"),
        ({"type": "echo", "run_at": utcnow() + timedelta(days=366)}, InvalidArgument, "run_at"),
        ({"type": "echo", "labels": {f"k{n}": "v" for n in range(21)}}, InvalidArgument, "labels"),
        ({"type": "echo", "labels": {"": "v"}}, InvalidArgument, "labels"),
        ({"type": "echo", "unique_key": ""}, InvalidArgument, "unique_key"),
        ({"type": "echo", "unique_key": "x" * 256}, InvalidArgument, "unique_key"),
        ({"type": "echo", "unique_key": "k", "unique_for": timedelta(0)}, InvalidArgument, "unique_for"),
        (
            {"type": "echo", "unique_key": "k", "unique_for": timedelta(days=366)},
            InvalidArgument,
            "unique_for",
        ),
        ({"type": "echo", "unique_for": timedelta(seconds=5)}, InvalidArgument, "unique_for"),
        ({"type": "echo", "labels": {"-lead": "v"}}, InvalidArgument, "labels"),
        ({"type": "echo", "labels": {"k" * 64: "v"}}, InvalidArgument, "labels"),
        ({"type": "echo", "labels": {"sp ace": "v"}}, InvalidArgument, "labels"),
        ({"type": "echo", "labels": {"env": "x" * 256}}, InvalidArgument, "labels.env"),
        ({"type": "echo", "labels": {"env": "nul\x00"}}, InvalidArgument, "labels.env"),
        ({"type": "echo", "labels": {"env": "new\nline"}}, InvalidArgument, "labels.env"),
    ],
)
def test_invalid_submit_names_the_field_and_writes_nothing(
    service: JobService,
    store: InMemoryJobStore,
    publisher: InMemoryPublisher,
    request_fields: dict,
    error: type[Exception],
    field: str,
) -> None:
    with pytest.raises(error) as raised:
        service.submit(SubmitRequest(**request_fields))
    assert str(raised.value).startswith(field)
    assert store.jobs == {} and publisher.published == []


@pytest.mark.parametrize(
    ("type", "message"),
    [
        (
            "ehco",
            "type: unknown job type 'ehco' (known: echo, email, fail, http_call, noop, sleep); "
            "did you mean 'echo'?",
        ),
        ("resize", "type: unknown job type 'resize' (known: echo, email, fail, http_call, noop, sleep)"),
    ],
)
def test_unknown_type_lists_the_known_ones_and_suggests_a_close_one(
    service: JobService, type: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        service.submit(SubmitRequest(type=type))
    assert str(raised.value) == message


def test_limits_are_inclusive(service: JobService) -> None:
    service.submit(SubmitRequest(type="echo", job_id="a" * 128, max_attempts=100, timeout_seconds=86_400))
    service.submit(SubmitRequest(type="echo", job_id="a.b_c:d-E9", max_attempts=1, timeout_seconds=1))


def test_a_future_run_at_is_scheduled_and_not_published(
    service: JobService, publisher: InMemoryPublisher
) -> None:
    run_at = utcnow() + timedelta(days=365) - timedelta(seconds=5)
    job = service.submit(SubmitRequest(type="echo", run_at=run_at)).job
    assert (job.state, job.scheduled_at) == (JobState.SCHEDULED, run_at)
    assert publisher.published == [], "the scheduler publishes it when due"


def test_a_published_job_is_marked_so(service: JobService, store: InMemoryJobStore) -> None:
    job = service.submit(SubmitRequest(type="echo")).job
    stored = store.get(job.job_id)
    assert stored is not None and stored.published_at is not None


def test_broker_down_leaves_no_job(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    publisher.down = True
    with pytest.raises(BrokerUnavailable):
        service.submit(SubmitRequest(job_id="lost", type="echo"))
    assert store.get("lost") is None
    publisher.down = False
    assert service.submit(SubmitRequest(job_id="lost", type="echo")).created


def test_get_unknown_job_is_not_found(service: JobService) -> None:
    with pytest.raises(JobNotFound):
        service.get("missing")


def test_cancel_queued_job_is_not_terminated_on_a_worker(
    service: JobService, publisher: InMemoryPublisher
) -> None:
    job_id = service.submit(SubmitRequest(type="noop")).job.job_id
    outcome = service.cancel(job_id)
    assert outcome.cancelled and outcome.state is JobState.CANCELLED
    assert publisher.terminated == []


def test_cancel_running_job_terminates_it(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    job_id = service.submit(SubmitRequest(type="sleep", payload={"seconds": 5})).job.job_id
    assert store.claim(job_id, "w1", utcnow(), 30, f"{job_id}@1") is not None
    assert service.cancel(job_id).cancelled
    assert publisher.terminated == [f"{job_id}@1"], "the run that holds it, by its task id"
    # The run's late success must not overwrite CANCELLED.
    assert not store.succeed(job_id, 1, None, utcnow())
    assert service.get(job_id).state is JobState.CANCELLED


def test_cancel_finished_job_answers_false(service: JobService, store: InMemoryJobStore) -> None:
    job_id = service.submit(SubmitRequest(type="noop")).job.job_id
    store.claim(job_id, "w1", utcnow(), 30, f"{job_id}@1")
    store.succeed(job_id, 1, None, utcnow())
    outcome = service.cancel(job_id)
    assert not outcome.cancelled and outcome.state is JobState.SUCCEEDED


def test_cancelled_job_cannot_be_claimed(service: JobService, store: InMemoryJobStore) -> None:
    job_id = service.submit(SubmitRequest(type="noop")).job.job_id
    service.cancel(job_id)
    assert store.claim(job_id, "w1", utcnow(), 30, f"{job_id}@1") is None


def test_list_pages_through_every_job_once(service: JobService) -> None:
    ids = [service.submit(SubmitRequest(type="noop")).job.job_id for _ in range(120)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = service.list(JobFilter(), page_size=50, page_token=token)
        seen += [job.job_id for job in page.jobs]
        pages += 1
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert pages == 3
    assert seen == list(reversed(ids))


def test_list_page_size_is_capped_and_defaulted(service: JobService) -> None:
    for _ in range(60):
        service.submit(SubmitRequest(type="noop"))
    assert len(service.list(JobFilter()).jobs) == 50
    assert len(service.list(JobFilter(), page_size=5_000).jobs) == 60
    with pytest.raises(InvalidArgument, match="page_size"):
        service.list(JobFilter(), page_size=-1)


def test_labels_are_kept_and_a_job_without_them_keeps_its_fingerprint(service: JobService) -> None:
    labelled = service.submit(SubmitRequest(type="echo", labels={"env": "prod", "a.b/c-d_e": ""}))
    assert service.get(labelled.job.job_id).labels == {"env": "prod", "a.b/c-d_e": ""}
    plain = service.validate(SubmitRequest(type="echo", payload={"a": 1}))
    # What a job without labels was fingerprinted as before labels existed: repeats of old jobs still match.
    assert plain.fingerprint == "6602dd8c20ca1af700647e15c9fd87192a3049eefae405ddcf71c36d2959dc1e"


@pytest.mark.parametrize(
    ("filter", "field"),
    [
        (JobFilter(labels={"bad key": "v"}), "labels"),
        (JobFilter(job_id_prefix="no spaces"), "job_id_prefix"),
        (JobFilter(created_after=utcnow(), created_before=utcnow() - timedelta(seconds=1)), "created_before"),
    ],
)
def test_list_refuses_filters_outside_their_rules(service: JobService, filter: JobFilter, field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{field}"):
        service.list(filter)


@pytest.mark.parametrize("type", ["nul\x00", "x" * 65, "Echo", ""])
def test_list_refuses_a_type_filter_no_job_type_can_have(service: JobService, type: str) -> None:
    # Found by schemathesis: a NUL in the filter was a 500 from PostgreSQL.
    with pytest.raises(InvalidArgument, match=r"^type: "):
        service.list(JobFilter(type=type))


@pytest.mark.parametrize(
    "token", ["garbage!", "e30", "eyJhZnRlciI6ICJ4In0", "eyJhZnRlciI6IC0xLCAiZmlsdGVyIjogIiJ9"]
)
def test_list_rejects_tampered_page_tokens(service: JobService, token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        service.list(JobFilter(), page_token=token)


def test_list_rejects_a_token_used_with_other_filters(service: JobService) -> None:
    for _ in range(3):
        service.submit(SubmitRequest(type="noop"))
    token = service.list(JobFilter(), page_size=1).next_page_token
    with pytest.raises(InvalidArgument, match="different filters"):
        service.list(JobFilter(type="noop"), page_size=1, page_token=token)


def test_retry_requeues_a_failed_job_and_takes_it_out_of_the_dead_letters(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    job_id = service.submit(SubmitRequest(type="fail", payload={"times": 9})).job.job_id
    store.claim(job_id, "w", utcnow(), 30, f"{job_id}@1")
    store.fail_run(job_id, 1, JobState.FAILED, "boom", utcnow())
    job = service.retry(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert [p.job_id for p in publisher.published] == [job_id, job_id]
    assert publisher.dead_letters_removed == [job_id]


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_of_a_job_that_has_not_failed_is_a_failed_precondition(
    service: JobService, store: InMemoryJobStore, state: str
) -> None:
    job_id = service.submit(SubmitRequest(type="noop")).job.job_id
    if state != "queued":
        store.claim(job_id, "w", utcnow(), 30, f"{job_id}@1")
    if state == "succeeded":
        store.succeed(job_id, 1, None, utcnow())
    with pytest.raises(JobNotRetryable, match=state.upper()):
        service.retry(job_id)


def test_retry_with_the_broker_down_leaves_the_job_as_it_was(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    job_id = service.submit(SubmitRequest(type="noop")).job.job_id
    service.cancel(job_id)
    publisher.down = True
    with pytest.raises(BrokerUnavailable):
        service.retry(job_id)
    assert service.get(job_id).state is JobState.CANCELLED
    assert publisher.dead_letters_removed == []


def test_submit_many_names_the_first_bad_job_and_writes_nothing(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    requests = [SubmitRequest(type="echo") for _ in range(5)]
    requests[3] = SubmitRequest(type="sleep", payload={"seconds": "soon"})
    with pytest.raises(InvalidArgument, match=r"^jobs\[3\]\.payload\.seconds"):
        service.submit_many(requests)
    assert store.jobs == {} and publisher.published == []


def test_submit_many_refuses_a_job_id_twice_in_one_batch(
    service: JobService, store: InMemoryJobStore
) -> None:
    requests = [
        SubmitRequest(type="echo", job_id="a"),
        SubmitRequest(type="noop"),
        SubmitRequest(type="echo", job_id="a"),
    ]
    with pytest.raises(InvalidArgument, match=r"^jobs\[2\]\.job_id: repeats jobs\[0\]\.job_id"):
        service.submit_many(requests)
    assert store.jobs == {}


@pytest.mark.parametrize("size", [0, 1_001])
def test_submit_many_takes_1_to_1000_jobs(service: JobService, size: int) -> None:
    with pytest.raises(InvalidArgument, match=r"^jobs: must hold 1 to 1000 jobs"):
        service.submit_many([SubmitRequest(type="noop")] * size)


def test_submit_many_with_the_broker_down_leaves_no_job(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    publisher.down = True
    with pytest.raises(BrokerUnavailable):
        service.submit_many([SubmitRequest(type="noop", job_id=f"j{n}") for n in range(3)])
    assert store.jobs == {}


def test_jobs_of_independent_callers_are_written_together_each_with_its_own_outcome(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    service.submit(SubmitRequest(job_id="taken", type="echo", payload={"a": 1}))
    requests = [
        SubmitRequest(job_id="new", type="echo", payload={"a": 1}),
        SubmitRequest(job_id="new", type="echo", payload={"a": 1}),  # the same call, sent twice
        SubmitRequest(job_id="new", type="echo", payload={"a": 2}),  # another request with that id
        SubmitRequest(job_id="taken", type="echo", payload={"a": 1}),
        SubmitRequest(job_id="taken", type="noop"),
    ]
    outcomes = service.submit_validated([service.validate(request) for request in requests])
    assert [getattr(outcome, "created", None) for outcome in outcomes] == [True, False, None, False, None]
    assert isinstance(outcomes[2], JobAlreadyExists) and isinstance(outcomes[4], JobAlreadyExists)
    assert [job.job_id for job in publisher.published] == ["taken", "new"], "each new job published once"
    new = store.get("new")
    assert new is not None and new.payload == {"a": 1}


def test_a_batch_of_callers_with_the_broker_down_leaves_no_job(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    publisher.down = True
    with pytest.raises(BrokerUnavailable):
        service.submit_validated(
            [service.validate(SubmitRequest(job_id=f"j{n}", type="noop")) for n in range(3)]
        )
    assert all(store.get(f"j{n}") is None for n in range(3))


def _finish(store: InMemoryJobStore, job_id: str, state: JobState) -> None:
    store.claim(job_id, "w", utcnow(), 30, f"{job_id}@1")
    if state is JobState.SUCCEEDED:
        store.succeed(job_id, 1, None, utcnow())
    else:
        store.fail_run(job_id, 1, state, "boom", utcnow())


def test_retry_many_queues_the_failed_jobs_the_filter_matches_and_skips_the_rest(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    def submit(n: int, batch: str) -> str:
        return service.submit(
            SubmitRequest(type="noop", job_id=f"{batch}-{n}", labels={"batch": batch})
        ).job.job_id

    dead = [submit(n, "a") for n in range(7)]
    succeeded = [submit(n, "a") for n in range(7, 10)]
    other = submit(0, "b")
    for job_id in dead:
        _finish(store, job_id, JobState.DEAD_LETTER)
    for job_id in [*succeeded, other]:
        _finish(store, job_id, JobState.SUCCEEDED if job_id != other else JobState.DEAD_LETTER)
    published = len(publisher.published)

    dry = service.retry_many(JobFilter(labels={"batch": "a"}), dry_run=True)
    assert (dry.acted_on, dry.skipped) == (7, 3)
    assert len(publisher.published) == published and service.get(dead[0]).state is JobState.DEAD_LETTER

    assert service.retry_many(JobFilter(labels={"batch": "a"}), limit=5).acted_on == 5
    outcome = service.retry_many(JobFilter(labels={"batch": "a"}, state=JobState.DEAD_LETTER))
    assert (outcome.acted_on, outcome.skipped) == (2, 0)
    assert {service.get(job_id).state for job_id in dead} == {JobState.QUEUED}
    assert service.get(other).state is JobState.DEAD_LETTER, "another label's job is left alone"
    assert sorted(job.job_id for job in publisher.published[published:]) == sorted(dead)
    assert sorted(publisher.dead_letters_removed) == sorted(dead)


def test_cancel_many_cancels_what_has_not_finished(
    service: JobService, store: InMemoryJobStore, publisher: InMemoryPublisher
) -> None:
    ids = [service.submit(SubmitRequest(type="noop", job_id=f"c{n}")).job.job_id for n in range(4)]
    store.claim("c1", "w", utcnow(), 30, "c1@1")
    _finish(store, "c2", JobState.SUCCEEDED)
    outcome = service.cancel_many(JobFilter(job_id_prefix="c"))
    assert (outcome.acted_on, outcome.skipped) == (3, 1)
    assert [service.get(job_id).state for job_id in ids] == [
        JobState.CANCELLED,
        JobState.CANCELLED,
        JobState.SUCCEEDED,
        JobState.CANCELLED,
    ]
    assert publisher.terminated == ["c1@1"], "the running one is stopped on its worker"


def test_bulk_actions_need_a_filter_and_a_limit_that_is_not_negative(service: JobService) -> None:
    with pytest.raises(InvalidArgument, match=r"^filter"):
        service.cancel_many(JobFilter())
    with pytest.raises(InvalidArgument, match=r"^limit"):
        service.retry_many(JobFilter(type="noop"), limit=-1)


def test_a_unique_key_answers_the_job_holding_it(service: JobService, publisher: InMemoryPublisher) -> None:
    window = timedelta(minutes=5)
    first = service.submit(
        SubmitRequest(type="echo", payload={"n": 1}, unique_key="daily", unique_for=window)
    )
    again = service.submit(
        SubmitRequest(type="echo", payload={"n": 2}, unique_key="daily", unique_for=window)
    )
    assert first.created and not again.created
    assert again.job.job_id == first.job.job_id and again.job.payload == {"n": 1}
    batch = service.submit_many(
        [SubmitRequest(type="echo", unique_key="daily"), SubmitRequest(type="echo", unique_key="weekly")]
    )
    assert [(outcome.job.job_id == first.job.job_id, outcome.created) for outcome in batch] == [
        (True, False),
        (False, True),
    ]
    assert len(publisher.published) == 2


def test_a_job_type_s_default_unique_key_comes_from_its_payload_fields(store: InMemoryJobStore) -> None:
    registry = HandlerRegistry()

    class Sync(BaseModel):
        customer: str
        full: bool = False

    registry.handler("sync", schema=Sync, unique_by=("customer",), unique_for=60)(lambda payload, job: None)
    service = JobService(store, InMemoryPublisher(), registry)
    acme = service.submit(SubmitRequest(type="sync", payload={"customer": "acme"}))
    acme_full = service.submit(SubmitRequest(type="sync", payload={"customer": "acme", "full": True}))
    other = service.submit(SubmitRequest(type="sync", payload={"customer": "globex"}))
    chosen = service.submit(SubmitRequest(type="sync", payload={"customer": "acme"}, unique_key="own"))
    assert (acme.created, acme_full.created, other.created, chosen.created) == (True, False, True, True)
    assert acme_full.job.job_id == acme.job.job_id
    (held,) = [key for key, (job_id, _) in store.unique_keys.items() if job_id == acme.job.job_id]
    assert held.startswith("sync:") and store.unique_keys[held][1] is not None  # the type's 60 s window
