"""Requests protobuf cannot parse (nested past its depth limit, malformed bytes) answer INVALID_ARGUMENT.

grpc reports a failing request deserializer as UNKNOWN ("Unexpected DecodeError"), which tells the caller
nothing. This interceptor gives every handler a deserializer that never raises, and answers a request it
could not parse with a clear status instead of calling the servicer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True, slots=True)
class Undecodable:
    reason: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return Undecodable(str(exc) or type(exc).__name__)

    return tolerant


def _refusal(request: Undecodable) -> str:
    if "Depth" in request.reason or "recursion" in request.reason.lower():
        return "request is nested too deeply (a payload may nest objects and arrays 32 levels deep)"
    return "request could not be parsed"


class RequestDecoding(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            stream = handler.unary_stream

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(request))
                async for reply in stream(request, context):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)

        unary = handler.unary_unary

        async def answering(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(request))
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(answering, **kwargs)
