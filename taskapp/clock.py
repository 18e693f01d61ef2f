"""The one clock taskapp stamps jobs with: UTC, timezone-aware. Components take it as a parameter so tests can
move time."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
