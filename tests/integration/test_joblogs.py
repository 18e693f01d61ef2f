"""Capturing handler logs: bounded, and never a reason for a job to fail."""

from __future__ import annotations

import logging
import socket

from taskapp.joblogs import MAX_LINES_PER_JOB, JobLogCapture
from taskapp.store.engine import open_store
from taskapp.store.port import JobStore


def capture_into(store: JobStore, lines: int) -> JobLogCapture:
    logger = logging.getLogger("handlers.test-capture")
    logger.setLevel(logging.INFO)
    capture = JobLogCapture(store, "j", attempt=1)
    logger.addFilter(capture)
    logger.addHandler(capture)
    try:
        for n in range(lines):
            logger.info("line %d", n)
    finally:
        logger.removeHandler(capture)
        logger.removeFilter(capture)
        capture.finish()
    return capture


def test_lines_past_the_cap_are_counted_and_marked(database_url: str) -> None:
    store = open_store(database_url)
    capture = capture_into(store, MAX_LINES_PER_JOB + 250)
    lines = store.logs("j")
    assert len(lines) == MAX_LINES_PER_JOB + 1
    assert [line.message for line in lines[:2]] == ["line 0", "line 1"]
    assert lines[-1].message == "log cap reached: 250 line(s) of this attempt dropped"
    assert capture.dropped == 250
    store.engine.dispose()


def test_a_database_that_is_away_loses_the_lines_but_never_raises() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        store = open_store(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none")
        capture = capture_into(store, 300)
    assert capture.dropped >= 300
