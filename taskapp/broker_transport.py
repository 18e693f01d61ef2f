"""kombu's Redis transport, with one Redis client per channel for the commands it sends outside its event loop.

kombu's Redis channel builds a new `redis.Redis` client for every publish, publish batch, acknowledgement and
event flush (`Channel.conn_or_acquire`), and redis-py builds each client's table of response callbacks anew:
a fifth of a worker's main process's CPU per job, and a third of a millisecond per publish in the gateway. The
client here is built once per channel, on the same connection pool; redis-py clients are safe to share between
threads, each command taking a connection from the pool. The event loop's own client (BRPOP) is kombu's, as it
was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import redis
from kombu.transport import redis as kombu_redis


class OneClientPerChannel:
    """The override, for kombu's plain Redis channel and its Sentinel channel alike."""

    @cached_property
    def _commands_client(self) -> redis.Redis:
        client: redis.Redis = self._create_client()  # type: ignore[attr-defined]
        return client

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client or self._commands_client


class Channel(OneClientPerChannel, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    """Use with a `redis://` or `rediss://` broker URL (`broker_transport`)."""

    Channel = Channel


class SentinelChannel(OneClientPerChannel, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    """Use with kombu's `sentinel://` broker URL and the `master_name` transport option."""

    Channel = SentinelChannel
