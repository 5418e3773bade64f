"""`--max-concurrent-rpcs`: calls beyond the limit get RESOURCE_EXHAUSTED, health checks never do.

gRPC's own `maximum_concurrent_rpcs` counts every call, health checks included, so under load an orchestrator's
probe is refused like any other call and a healthy, merely busy sidecar gets restarted. This interceptor enforces
the same limit on every service except `grpc.health.v1.Health`: an overloaded sidecar is reported as overloaded
(RESOURCE_EXHAUSTED to the signer) and as alive and SERVING to the probe. The HTTP `/healthz` and `/readyz`
endpoints run in a thread of their own and were never counted.

Every handler runs on the server's one event loop, so the count needs no lock. A call counts from the moment its
handler starts until it returns (for a stream: until the stream ends or is cancelled). The interceptor is only
installed when a limit is configured; without one, calls do not pass through it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

from sidecar.errors import ConfigurationError

__all__ = ["EXEMPT_PREFIXES", "ConcurrencyLimit", "concurrency_interceptors"]

# Method-name prefixes never counted nor refused: the probes.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)

_Context: TypeAlias = "aio.ServicerContext[Any, Any]"


class ConcurrencyLimit(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses a call with RESOURCE_EXHAUSTED while `limit` counted calls are in flight."""

    def __init__(self, limit: int, exempt_prefixes: tuple[str, ...] = EXEMPT_PREFIXES) -> None:
        if limit < 1:
            raise ConfigurationError(f"--max-concurrent-rpcs must be at least 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self._exempt = exempt_prefixes
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._message = (
            f"overloaded: {limit} calls in flight, the most --max-concurrent-rpcs allows; do not sign, retry with "
            "backoff"
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(self._exempt):
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(handler)
        return wrapped

    async def _enter(self, context: _Context) -> None:
        if self.in_flight >= self.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._message)
        self.in_flight += 1

    def _counted(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def streaming(request: Any, context: _Context) -> AsyncIterator[Any]:
                await self._enter(context)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    self.in_flight -= 1

            return streaming

        async def single(request: Any, context: _Context) -> Any:
            await self._enter(context)
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return single

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._counted(handler.unary_unary), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._counted(handler.unary_stream), **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._counted(handler.stream_unary), **serializers)
        return grpc.stream_stream_rpc_method_handler(self._counted(handler.stream_stream), **serializers)


def concurrency_interceptors(limit: int | None) -> list[aio.ServerInterceptor]:
    """The interceptors for `--max-concurrent-rpcs limit` (none without a limit)."""
    return [] if limit is None else [ConcurrencyLimit(limit)]
