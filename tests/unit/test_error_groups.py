"""Dead letters grouped by error: one bug is one group, whatever ids, numbers or values its jobs carried."""

from __future__ import annotations

from datetime import timedelta

from taskapp.clock import utcnow
from taskapp.error_groups import error_signature, group_errors
from taskapp.jobs import Job, JobState, Priority

T0 = utcnow()


def test_what_varies_from_job_to_job_is_taken_out_of_the_message() -> None:
    assert error_signature("KeyError: 'user-17'") == ("KeyError", "<str>")
    assert error_signature(
        "ValueError: order 123 of customer 9f86d081-884c-4d63-a8e1-c7e1a2b5b9e4 at 0x7f3a"
    ) == (
        "ValueError",
        "order <n> of customer <uuid> at <hex>",
    )
    assert error_signature("HTTPError: 503 after 2.5 s\nTraceback (most recent call last): ...") == (
        "HTTPError",
        "<n> after <n> s",
    )
    assert error_signature("the worker running it was lost") == ("", "the worker running it was lost")
    assert error_signature("") == ("", "")


def dead_letter(job_id: str, error: str, minutes: int) -> Job:
    at = T0 + timedelta(minutes=minutes)
    return Job(
        job_id=job_id, type="echo", priority=Priority.DEFAULT, state=JobState.DEAD_LETTER, payload={},
        result=None, attempts=1, max_attempts=1, last_error=error, timeout_seconds=30, created_at=at,
        updated_at=at, scheduled_at=at, started_at=at, finished_at=at, worker="w", seq=1, fingerprint="",
    )  # fmt: skip


def test_jobs_with_one_error_form_one_group_counted_with_first_and_last_seen() -> None:
    groups = group_errors(
        [
            dead_letter("a", "KeyError: 'u1'", 0),
            dead_letter("b", "TimeoutError: after 30 s", 1),
            dead_letter("c", "KeyError: 'u2'", 5),
            dead_letter("d", "KeyError: 'u3'", 2),
        ]
    )
    assert [(g.type, g.message, g.count) for g in groups] == [
        ("KeyError", "<str>", 3),
        ("TimeoutError", "after <n> s", 1),
    ]
    keys = groups[0]
    assert keys.job_ids == ["a", "c", "d"]
    assert (keys.first_seen, keys.last_seen) == (T0, T0 + timedelta(minutes=5))
    assert keys.key != groups[1].key and len(keys.key) == 16
