"""Dead letters grouped by what went wrong: the error's type and its message with the parts that differ from
job to job (numbers, ids, addresses, quoted values) taken out, so one bug is one group however many jobs hit it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from taskapp.jobs import Job

#: What varies between jobs hit by one bug, in the order it is replaced (UUIDs before hex before numbers).
_VARYING = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b[0-9a-fA-F]{16,}\b"), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\b\d+(?:\.\d+)?\b"), "<n>"),
]
#: "ValueError: message" -> the type; errors without one (a lost worker's note) have none.
_TYPED = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.S)
#: Characters of the message kept for grouping: tracebacks and long bodies differ only further on.
MESSAGE_CHARS = 300


def error_signature(error: str) -> tuple[str, str]:
    """(type, normalised message) of a job's `last_error`."""
    first_line = error.strip().splitlines()[0] if error.strip() else ""
    typed = _TYPED.match(first_line)
    kind, message = (typed[1], typed[2]) if typed else ("", first_line)
    message = message[:MESSAGE_CHARS]
    for pattern, replacement in _VARYING:
        message = pattern.sub(replacement, message)
    return kind, message


@dataclass
class ErrorGroup:
    type: str
    message: str
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    job_ids: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """A short stable name for the group, for links and forms."""
        return hashlib.sha256(f"{self.type}\0{self.message}".encode()).hexdigest()[:16]


def group_errors(jobs: Iterable[Job]) -> list[ErrorGroup]:
    """The jobs' errors by signature, the largest group first."""
    groups: dict[tuple[str, str], ErrorGroup] = {}
    for job in jobs:
        signature = error_signature(job.last_error)
        group = groups.get(signature) or groups.setdefault(signature, ErrorGroup(*signature))
        seen = job.finished_at or job.updated_at
        group.count += 1
        group.job_ids.append(job.job_id)
        group.first_seen = min(group.first_seen or seen, seen)
        group.last_seen = max(group.last_seen or seen, seen)
    return sorted(groups.values(), key=lambda group: (-group.count, group.type, group.message))
