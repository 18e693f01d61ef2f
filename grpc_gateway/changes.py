"""One Redis subscription per gateway to job change notifications (`taskapp.notify`), fanned out to the
WatchJob streams waiting on each job. The notification only wakes a stream; the stream reads SQL.

The gateway subscribes only while some stream waits (and for a while after the last one ends): reading the
notifications of every job the workers change took a tenth of a busy gateway's CPU when no one was watching."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

from redis.exceptions import RedisError

from taskapp.notify import changes_channel
from taskapp.redis_target import async_redis_client

log = logging.getLogger(__name__)

#: Seconds between attempts to subscribe again after Redis went away.
RESUBSCRIBE_SECONDS = 1.0
#: Seconds the subscription outlives the last stream, so that streams one after another keep it.
LINGER_SECONDS = 30.0


class ChangeListener:
    def __init__(self, redis_url: str, linger_seconds: float = LINGER_SECONDS) -> None:
        self._client = async_redis_client(redis_url)
        self.channel = changes_channel(self._client)  # type: ignore[arg-type]
        self._linger_seconds = linger_seconds
        self._waiting: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._watched = asyncio.Event()
        self._unwatched_since = 0.0

    @contextlib.contextmanager
    def waiting_on(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the job changes, for as long as the caller watches it."""
        event = asyncio.Event()
        self._waiting[job_id].add(event)
        self._watched.set()
        try:
            yield event
        finally:
            self._waiting[job_id].discard(event)
            if not self._waiting[job_id]:
                del self._waiting[job_id]
            if not self._waiting:
                self._watched.clear()
                self._unwatched_since = asyncio.get_running_loop().time()

    def _wake(self, job_id: str) -> None:
        for event in self._waiting.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in list(self._waiting.values()):
            for event in events:
                event.set()

    def _wanted(self) -> bool:
        """Whether to stay subscribed: someone waits, or the last one left less than the linger ago."""
        idle = asyncio.get_running_loop().time() - self._unwatched_since
        return self._watched.is_set() or idle < self._linger_seconds

    async def run(self) -> None:
        """Listen while someone waits, until cancelled; subscribe again whenever Redis comes back."""
        while True:
            await self._watched.wait()
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while await pubsub.get_message(timeout=1.0) is None:
                        pass  # until Redis confirms the subscription
                    # Changes made before the subscription was in place: every watcher looks again.
                    self._wake_all()
                    while self._wanted():
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message["type"] == "message":
                            for job_id in message["data"].decode().split():
                                self._wake(job_id)
            except (RedisError, OSError) as exc:
                log.warning("job change notifications lost (%s): watchers fall back to polling", exc)
                self._wake_all()
                await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def close(self) -> None:
        await self._client.aclose()
