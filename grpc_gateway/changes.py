"""One Redis subscription per gateway to job change notifications (`taskapp.notify`), fanned out to the
WatchJob streams waiting on each job. The notification only wakes a stream; the stream reads SQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

import redis.asyncio
from redis.exceptions import RedisError

from taskapp.notify import changes_channel

log = logging.getLogger(__name__)

#: Seconds between attempts to subscribe again after Redis went away.
RESUBSCRIBE_SECONDS = 1.0


class ChangeListener:
    def __init__(self, redis_url: str) -> None:
        self._client = redis.asyncio.Redis.from_url(redis_url)
        self.channel = changes_channel(self._client)  # type: ignore[arg-type]
        self._waiting: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    @contextlib.contextmanager
    def waiting_on(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the job changes, for as long as the caller watches it."""
        event = asyncio.Event()
        self._waiting[job_id].add(event)
        try:
            yield event
        finally:
            self._waiting[job_id].discard(event)
            if not self._waiting[job_id]:
                del self._waiting[job_id]

    def _wake(self, job_id: str) -> None:
        for event in self._waiting.get(job_id, ()):
            event.set()

    async def run(self) -> None:
        """Listen until cancelled, subscribing again whenever Redis comes back."""
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            for job_id in message["data"].decode().split():
                                self._wake(job_id)
            except (RedisError, OSError) as exc:
                log.warning("job change notifications lost (%s): watchers fall back to polling", exc)
                # Changes made while unsubscribed: every watcher looks again.
                for events in list(self._waiting.values()):
                    for event in events:
                        event.set()
                await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def close(self) -> None:
        await self._client.aclose()
