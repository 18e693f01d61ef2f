"""The overview's figures from what the store counted: the hour minute by minute, the slowest types, the
workers that count as answering."""

from __future__ import annotations

from datetime import timedelta

from taskapp.clock import utcnow
from taskapp.jobs import Activity, JobState, WorkerBeat
from taskapp.overview import answering, per_minute, slowest_types

NOW = utcnow().replace(second=30, microsecond=0)
MINUTE = NOW.replace(second=0)


def activity(
    minutes_ago: int, type: str, state: JobState, count: int, seconds: float, longest: float
) -> Activity:
    return Activity(MINUTE - timedelta(minutes=minutes_ago), type, state, count, seconds, longest)


def test_the_hour_has_sixty_minutes_oldest_first_with_failures_apart_and_cancels_left_out() -> None:
    minutes = per_minute(
        [
            activity(0, "echo", JobState.SUCCEEDED, 4, 1.0, 0.5),
            activity(0, "echo", JobState.DEAD_LETTER, 1, 0.1, 0.1),
            activity(0, "noop", JobState.FAILED, 2, 0.1, 0.1),
            activity(0, "noop", JobState.CANCELLED, 7, 0.0, 0.0),
            activity(59, "echo", JobState.SUCCEEDED, 3, 1.0, 0.5),
            activity(60, "echo", JobState.SUCCEEDED, 100, 1.0, 0.5),  # outside the hour
        ],
        NOW,
    )
    assert len(minutes) == 60
    assert (minutes[0].at, minutes[-1].at) == (MINUTE - timedelta(minutes=59), MINUTE)
    assert (minutes[-1].succeeded, minutes[-1].failed) == (4, 3)
    assert (minutes[0].succeeded, minutes[0].failed) == (3, 0)
    assert sum(m.succeeded + m.failed for m in minutes[1:-1]) == 0


def test_slowest_types_by_mean_run_over_the_minutes() -> None:
    timings = slowest_types(
        [
            activity(0, "fast", JobState.SUCCEEDED, 10, 1.0, 0.2),
            activity(1, "slow", JobState.SUCCEEDED, 2, 10.0, 6.0),
            activity(2, "slow", JobState.FAILED, 2, 2.0, 1.5),
            activity(0, "cancelled", JobState.CANCELLED, 1, 99.0, 99.0),
        ]
    )
    assert [(t.type, t.finished, t.mean_seconds, t.max_seconds) for t in timings] == [
        ("slow", 4, 3.0, 6.0),
        ("fast", 10, 0.1, 0.2),
    ]


def test_a_worker_answers_until_it_misses_three_beats() -> None:
    def beat(name: str, seconds_ago: float) -> WorkerBeat:
        return WorkerBeat(name, "h", 1, 2, NOW, NOW - timedelta(seconds=seconds_ago))

    workers = [beat("fresh", 1), beat("late", 14), beat("gone", 16)]
    assert [w.name for w in answering(workers, NOW, beat_seconds=5)] == ["fresh", "late"]
