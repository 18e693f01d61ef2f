"""Input the database or JSON cannot hold, through the real gateway: the bad call alone gets INVALID_ARGUMENT,
and the valid calls written in the same batch are not harmed."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from grpc_gateway.v1 import jobs_pb2
from taskapp.store.tables import jobs_table
from tests.helpers import Stack, sql_count, submit

MakeStack = Callable[..., Stack]


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def nested(levels: int) -> dict[str, Any]:
    """A payload whose objects nest `levels` deep, the payload itself being the first."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


@pytest.fixture(scope="module")
def gateway(make_module_stack: MakeStack) -> Stack:
    """One gateway for the tests that count nothing another writes."""
    return make_module_stack(worker=False)


def test_a_nul_character_fails_only_its_own_call(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    payloads: list[dict[str, Any]] = [{"n": n} for n in range(40)]
    payloads.insert(20, {"note": "bad\x00byte"})
    with ThreadPoolExecutor(max_workers=41) as pool:
        codes = list(pool.map(lambda payload: code_of(lambda: submit(stack, "echo", payload)), payloads))
    assert codes.count(grpc.StatusCode.OK) == 40
    assert codes[20] is grpc.StatusCode.INVALID_ARGUMENT
    assert sql_count(stack, jobs_table) == 40
    with pytest.raises(grpc.RpcError) as key:
        submit(stack, "echo", {"bad\x00key": 1})
    assert key.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert key.value.details().startswith("payload")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_invalid(gateway: Stack, number: float) -> None:
    stack = gateway
    with pytest.raises(grpc.RpcError) as raised:
        submit(stack, "echo", {"x": number})
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("payload")


def test_a_forged_page_token_is_invalid(gateway: Stack) -> None:
    stack = gateway
    submit(stack, "noop")
    filters = json.loads(base64.urlsafe_b64decode(_token(stack) + "=="))["filter"]
    for after in (2**63, 10**30, 0, -5):
        forged = base64.urlsafe_b64encode(json.dumps({"after": after, "filter": filters}).encode()).decode()
        with pytest.raises(grpc.RpcError) as raised:
            stack.stub().ListJobs(jobs_pb2.ListJobsRequest(page_token=forged), timeout=10)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, after
        assert raised.value.details().startswith("page_token")


def _token(stack: Stack) -> str:
    submit(stack, "noop")
    page = stack.stub().ListJobs(jobs_pb2.ListJobsRequest(page_size=1), timeout=10)
    return str(page.next_page_token)


def test_the_documented_nesting_limit_holds(gateway: Stack) -> None:
    stack = gateway
    submit(stack, "echo", nested(32))
    for levels in (33, 40):
        with pytest.raises(grpc.RpcError) as raised:
            submit(stack, "echo", nested(levels))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, levels
        assert "32 levels" in raised.value.details(), raised.value.details()
