"""Shedding cancelled entries from kombu's timer, on a real kombu timer."""

from __future__ import annotations

from kombu.asynchronous.timer import Timer

from taskapp.worker_timers import shed_cancelled


def test_cancelled_entries_leave_the_heap_and_live_ones_keep_their_order() -> None:
    timer = Timer()
    fired: list[int] = []
    entries = [timer.call_after(100 + n, fired.append, (n,)) for n in range(10)]
    for entry in entries[::2]:
        entry.cancel()
    assert len(timer) == 10, "kombu keeps a cancelled entry until its time"
    assert shed_cancelled(timer) == 5
    assert len(timer) == 5 and shed_cancelled(timer) == 0
    assert [event.entry.args[0] for event in timer.queue] == [1, 3, 5, 7, 9]
