"""Least privilege on the gRPC port: which verified client may call which service.

With mutual TLS the operator names two roles by client identity (``serve --tls-signer-identity NAME`` and
``--tls-admin-identity NAME``, each repeatable):

========================================  ==============================================================
service                                   who may call it
========================================  ==============================================================
``SlashingProtectionService``             a signer identity
``InterchangeService``, ``AdminService``  an admin identity
health, server reflection                 any client that passed the TLS handshake
anything else                             nobody
========================================  ==============================================================

A client's identities are the names its certificate carries: the subject common name and every DNS and URI
subject alternative name (as gRPC reports them after verifying the chain against the client CA: the
``x509_common_name``, ``peer_dns`` and ``peer_uri`` properties of the call's auth context). A NAME matches when
it equals one of them exactly; a certificate named in both roles may call both. IP and e-mail SANs are not
identities here: they name a place or a person, not a principal.

A call the policy does not allow ends with ``PERMISSION_DENIED`` before the servicer sees it, so it changes
nothing; the refusal is logged once per client identity and service group (a misconfigured client retrying in a
loop must not flood the log), naming the identity and the option that would admit it.

Without either option there is no policy: every verified client may call everything, as before the options
existed, and the server's startup line says so. The options need ``--tls-client-ca`` (checked by the server's
configuration): without client certificates there is no identity to match.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from slashing_protection.v1 import admin_pb2, interchange_pb2, signing_pb2

__all__ = ["AccessPolicy", "AuthorizationInterceptor", "Role", "client_identities"]

log = logging.getLogger("sidecar.authz")


class Role:
    SIGNER = "signer"
    ADMIN = "admin"


SERVICE_ROLES: dict[str, str] = {
    signing_pb2.DESCRIPTOR.services_by_name["SlashingProtectionService"].full_name: Role.SIGNER,
    interchange_pb2.DESCRIPTOR.services_by_name["InterchangeService"].full_name: Role.ADMIN,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name: Role.ADMIN,
}
OPEN_SERVICES = frozenset(
    {
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
        "grpc.reflection.v1.ServerReflection",
    }
)
ROLE_OPTIONS = {Role.SIGNER: "--tls-signer-identity", Role.ADMIN: "--tls-admin-identity"}
ROLE_SERVICES = {Role.SIGNER: "the signing service", Role.ADMIN: "the interchange and admin services"}
# gRPC auth-context properties that carry a verified client certificate's names.
IDENTITY_PROPERTIES = ("x509_common_name", "peer_dns", "peer_uri")
# Bounds the memory of "already logged" refusals; past it, refusals are still refused, just no longer logged.
MAX_LOGGED_REFUSALS = 10_000


def client_identities(auth_context: dict[str, list[bytes]]) -> tuple[str, ...]:
    """The names a verified client certificate carries (CN first, then DNS and URI SANs), without duplicates."""
    names: list[str] = []
    for prop in IDENTITY_PROPERTIES:
        for value in auth_context.get(prop, ()):
            name = value.decode("utf-8", errors="replace")
            if name not in names:
                names.append(name)
    return tuple(names)


def _service_of(method: str) -> str:
    """``/pkg.Service/Method`` -> ``pkg.Service``."""
    return method.lstrip("/").split("/", 1)[0]


@dataclass(frozen=True)
class AccessPolicy:
    """The identities allowed in each role. Empty in both: no policy (every verified client may call
    everything)."""

    signer_identities: frozenset[str] = frozenset()
    admin_identities: frozenset[str] = frozenset()

    @classmethod
    def of(cls, signers: Iterable[str], admins: Iterable[str]) -> AccessPolicy:
        return cls(frozenset(signers), frozenset(admins))

    @property
    def enforced(self) -> bool:
        return bool(self.signer_identities or self.admin_identities)

    def role_for(self, method: str) -> str | None:
        """The role ``method`` needs; ``None`` for services open to any verified client."""
        service = _service_of(method)
        if service in OPEN_SERVICES:
            return None
        # A service the policy does not know (none exists today) needs a role nobody has.
        return SERVICE_ROLES.get(service, "unknown")

    def allows(self, role: str | None, identities: Iterable[str]) -> bool:
        if role is None:
            return True
        allowed = {Role.SIGNER: self.signer_identities, Role.ADMIN: self.admin_identities}.get(role, frozenset())
        return not allowed.isdisjoint(identities)

    def describe(self) -> str:
        """For the startup line."""
        if not self.enforced:
            return "any client with a certificate from the client CA may call every service"
        parts = []
        for role, names in ((Role.SIGNER, self.signer_identities), (Role.ADMIN, self.admin_identities)):
            who = ", ".join(sorted(names)) if names else "nobody"
            parts.append(f"{ROLE_SERVICES[role]}: {who}")
        return "access by client identity: " + "; ".join(parts)


Behavior = Callable[..., Any]


class AuthorizationInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Enforces an :class:`AccessPolicy` before any servicer runs (see the module docstring)."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy
        self._logged: set[tuple[tuple[str, ...], str]] = set()
        self._logged_lock = threading.Lock()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        role = self._policy.role_for(handler_call_details.method)
        if handler is None or role is None:
            return handler
        return _guarded(handler, lambda context: self._check(context, role, handler_call_details.method))

    async def _check(self, context: aio.ServicerContext[Any, Any], role: str, method: str) -> None:
        identities = client_identities(context.auth_context())
        if self._policy.allows(role, identities):
            return
        who = ", ".join(identities) if identities else "(a client certificate without a name)"
        self._log_once(identities, role, method, who)
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"client identity {who} may not call {_service_of(method)}: the server names the identities allowed "
            f"to call {ROLE_SERVICES.get(role, 'it')} with {ROLE_OPTIONS.get(role, 'no option')}",
        )

    def _log_once(self, identities: tuple[str, ...], role: str, method: str, who: str) -> None:
        key = (identities, role)
        with self._logged_lock:
            if key in self._logged or len(self._logged) >= MAX_LOGGED_REFUSALS:
                return
            self._logged.add(key)
        log.warning(
            "permission denied: client identity %s called %s without being named by %s "
            "(further refusals of this identity are not logged)",
            who,
            method,
            ROLE_OPTIONS.get(role, "any option"),
            extra={"client_identity": list(identities), "method": method},
        )


def _guarded(
    handler: grpc.RpcMethodHandler, check: Callable[[aio.ServicerContext[Any, Any]], Awaitable[None]]
) -> grpc.RpcMethodHandler:
    """The same handler, with ``check`` awaited before the servicer's method runs (it aborts the call to deny)."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None or handler.stream_unary is not None:
        single: Behavior = handler.unary_unary or handler.stream_unary

        async def respond_once(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            return await single(request, context)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(respond_once, **serializers)
        return grpc.stream_unary_rpc_method_handler(respond_once, **serializers)

    streaming: Behavior = handler.unary_stream or handler.stream_stream

    async def respond_streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await check(context)
        async for response in streaming(request, context):
            yield response

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(respond_streaming, **serializers)
    return grpc.stream_stream_rpc_method_handler(respond_streaming, **serializers)
