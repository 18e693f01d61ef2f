"""Job change notifications over a real Redis: what a writer announces wakes the gateway's waiters on that job
only. (WatchJob would still work without them, by its one-second fallback read; this proves the fast path.)"""

from __future__ import annotations

import asyncio

import redis

from grpc_gateway.changes import ChangeListener
from taskapp.jobs import JobChange, JobState
from taskapp.notify import ChangePublisher, changes_channel


def test_a_published_change_wakes_the_waiters_of_those_jobs_only(redis_url: str) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        listener = ChangeListener(redis_url)
        listening = asyncio.create_task(listener.run())
        publisher = ChangePublisher(redis_url)
        try:
            with (
                listener.waiting_on("job-a") as woken,
                listener.waiting_on("job-c") as also_woken,
                listener.waiting_on("job-b") as other,
            ):
                # Once subscribed, the listener has every waiter look again (for changes made before).
                await asyncio.wait_for(other.wait(), 5)
                for event in (woken, also_woken, other):
                    event.clear()
                changes = [
                    JobChange("job-a", "echo", JobState.RUNNING),
                    JobChange("job-a", "echo", JobState.SUCCEEDED),
                    JobChange("job-c", "noop", JobState.RUNNING),
                ]
                await asyncio.to_thread(publisher, changes)
                await asyncio.wait_for(woken.wait(), 5)
                await asyncio.wait_for(also_woken.wait(), 5)
                return woken.is_set(), also_woken.is_set(), other.is_set()
        finally:
            listening.cancel()
            await listener.close()

    assert asyncio.run(scenario()) == (True, True, False)


def test_the_gateway_subscribes_only_while_someone_waits(redis_url: str) -> None:
    channel = changes_channel(redis.Redis.from_url(redis_url))
    client = redis.Redis.from_url(redis_url)

    def subscribers() -> int:
        return int(client.pubsub_numsub(channel)[0][1])

    async def until_subscribers(count: int) -> None:
        for _ in range(100):
            if subscribers() == count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{subscribers()} subscriber(s), not {count}")

    async def scenario() -> None:
        listener = ChangeListener(redis_url, linger_seconds=0.2)
        listening = asyncio.create_task(listener.run())
        try:
            await asyncio.sleep(0.3)
            assert subscribers() == 0
            with listener.waiting_on("job-a") as woken:
                await until_subscribers(1)
                await asyncio.wait_for(woken.wait(), 5)
            await until_subscribers(0)  # the linger over, the listener unsubscribes
        finally:
            listening.cancel()
            await listener.close()

    asyncio.run(scenario())


def test_channels_are_per_redis_database() -> None:
    first = redis.Redis.from_url("redis://127.0.0.1:6379/3")
    second = redis.Redis.from_url("redis://127.0.0.1:6379/4")
    assert changes_channel(first) != changes_channel(second)
