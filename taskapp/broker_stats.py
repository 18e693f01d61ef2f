"""What the broker holds and who consumes it, for GetQueueStats."""

from __future__ import annotations

from typing import Protocol

import kombu.exceptions
import redis.exceptions
from celery import Celery

from taskapp.errors import BrokerUnavailable
from taskapp.jobs import Priority
from taskapp.routing import DEAD_LETTER_QUEUE, broker_keys, queue_for

#: Seconds to wait for workers to answer a ping: a dead or busy fleet must not hang the call.
PING_TIMEOUT = 1.0


class BrokerStats(Protocol):
    def depths(self) -> dict[Priority, int]:
        """Messages waiting per priority, highest first."""
        ...

    def dead_letters(self) -> int: ...

    def workers(self) -> list[str]:
        """Names of the workers that answer a ping within `PING_TIMEOUT`."""
        ...


class RedisBrokerStats:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def _lengths(self, keys: list[str]) -> list[int]:
        try:
            with self.app.connection_for_read() as connection:
                pipeline = connection.default_channel.client.pipeline(transaction=False)
                for key in keys:
                    pipeline.llen(key)
                return [int(length) for length in pipeline.execute()]
        except (kombu.exceptions.OperationalError, redis.exceptions.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"broker unavailable: {exc}") from exc

    def depths(self) -> dict[Priority, int]:
        keys = {priority: broker_keys(queue_for(priority)) for priority in Priority}
        lengths = iter(self._lengths([key for group in keys.values() for key in group]))
        return {priority: sum(next(lengths) for _ in group) for priority, group in keys.items()}

    def dead_letters(self) -> int:
        return sum(self._lengths(broker_keys(DEAD_LETTER_QUEUE)))

    def workers(self) -> list[str]:
        try:
            replies = self.app.control.ping(timeout=PING_TIMEOUT)
        except (kombu.exceptions.OperationalError, redis.exceptions.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"broker unavailable: {exc}") from exc
        return sorted(name for reply in replies for name in reply)
