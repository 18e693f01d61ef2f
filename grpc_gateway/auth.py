"""Bearer tokens on every RPC but health and reflection.

`authorization: Bearer <token>` (or the bare token) is compared in constant time with each configured token;
anything else is UNAUTHENTICATED with a message that never repeats what was sent.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

#: Methods anyone may call: probes and tools (`grpcurl list`) must work without a token.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
#: A token is one run of visible ASCII: no spaces, so "Bearer" and the token cannot be confused.
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")
_BEARER = re.compile(r"^bearer +(\S+)$", re.IGNORECASE)
REFUSAL = "missing or invalid token: send 'authorization: Bearer <token>'"


def presented_token(header: str | None) -> bytes | None:
    """The token in an authorization header value, or None if it has no usable form."""
    if not header:
        return None
    match = _BEARER.match(header.strip())
    token = match.group(1) if match else header.strip()
    return token.encode() if _TOKEN.match(token) else None


class TokenAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("TokenAuth needs at least one token")
        self._tokens = [token.encode() for token in tokens]

    def accepts(self, header: str | None) -> bool:
        presented = presented_token(header)
        if presented is None:
            return False
        # Compare with every token, whatever matched: the time taken says nothing about which one did.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES) or handler is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        header = metadata.get("authorization")
        if self.accepts(header if isinstance(header, str) else None):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
        yield  # pragma: no cover - abort raises

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
