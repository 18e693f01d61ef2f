"""The gateway's shutdown gate: it stops refusing, and lets the server stop, only in a lull of calls."""

from __future__ import annotations

import asyncio
import time

from grpc_gateway.servicer import Gate


async def closed_gate() -> Gate:
    gate = Gate()
    await gate.close(grace=1)
    return gate


def test_a_gate_nobody_knocks_at_is_quiet_after_the_lull() -> None:
    async def scenario() -> float:
        gate = await closed_gate()
        started = time.monotonic()
        await gate.quiet(quiet_for=0.2, at_most=5)
        return time.monotonic() - started

    assert 0.15 <= asyncio.run(scenario()) < 1


def test_the_lull_starts_again_with_every_refused_call() -> None:
    async def scenario() -> tuple[float, float]:
        gate = await closed_gate()

        async def knock_for(seconds: float) -> float:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                gate.refuse()
                await asyncio.sleep(0.05)
            return time.monotonic()

        started = time.monotonic()
        knocking, _ = await asyncio.gather(knock_for(0.6), gate.quiet(quiet_for=0.2, at_most=5))
        return knocking - started, time.monotonic() - knocking

    knocked, quiet_after = asyncio.run(scenario())
    assert knocked >= 0.6
    assert 0.1 <= quiet_after < 1, "quiet only once the knocking stopped, a lull later"


def test_callers_that_never_stop_knocking_hold_the_gate_no_longer_than_the_bound() -> None:
    async def scenario() -> float:
        gate = await closed_gate()
        stop = asyncio.Event()

        async def knock() -> None:
            while not stop.is_set():
                gate.refuse()
                await asyncio.sleep(0.02)

        knocking = asyncio.create_task(knock())
        started = time.monotonic()
        await gate.quiet(quiet_for=0.2, at_most=0.5)
        waited = time.monotonic() - started
        stop.set()
        await knocking
        return waited

    assert 0.45 <= asyncio.run(scenario()) < 1.5
