"""Authentication and authorisation of every call, before any handler runs.

TLS has already refused anyone without a certificate of the network's CA.
This interceptor then refuses a certificate the CA has revoked, and a role
that may not make the call (a node cannot submit tasks, a researcher cannot
publish permits). Refusals are written to the coordinator's audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from oncofed.governance.audit import AuditTrail
from oncofed.governance.tls import Peer, RevokedCertificates, peer_of
from oncofed.kernel.errors import AccessDenied, OncofedError

log = logging.getLogger(__name__)

_PEOPLE = frozenset({"researcher", "hdab", "admin"})
_SERVICE = "/oncofed.v1."
ROLES_BY_METHOD: dict[str, frozenset[str]] = {
    f"{_SERVICE}NodeLink/Connect": frozenset({"node"}),
    f"{_SERVICE}Researcher/Submit": frozenset({"researcher"}),
    f"{_SERVICE}Researcher/Watch": frozenset({"researcher", "hdab"}),
    f"{_SERVICE}Researcher/Result": frozenset({"researcher", "hdab"}),
    f"{_SERVICE}Researcher/Cancel": frozenset({"researcher", "hdab"}),
    f"{_SERVICE}Operator/ListNodes": _PEOPLE,
    f"{_SERVICE}DataAccess/SubmitApplication": frozenset({"researcher"}),
    f"{_SERVICE}DataAccess/ListApplications": frozenset({"researcher", "hdab"}),
    f"{_SERVICE}DataAccess/GetApplication": frozenset({"researcher", "hdab"}),
    f"{_SERVICE}DataAccess/Decide": frozenset({"hdab"}),
    f"{_SERVICE}DataAccess/PublishPermit": frozenset({"hdab"}),
    f"{_SERVICE}DataAccess/GetPermit": frozenset({"researcher", "hdab"}),
    f"{_SERVICE}DataAccess/PublishRevocations": frozenset({"hdab"}),
    "/grpc.health.v1.Health/Check": _PEOPLE | {"node", "coordinator"},
    "/grpc.health.v1.Health/Watch": _PEOPLE | {"node", "coordinator"},
}


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, error: OncofedError) -> NoReturn:
    """End the call with a typed error the client turns back into its class."""
    context.abort(code, error.to_json())
    raise AssertionError("context.abort returns only by raising")


def caller(context: grpc.ServicerContext) -> Peer:
    """The authenticated caller (the interceptor has already refused calls without one)."""
    peer = peer_of(context)
    if peer is None:
        abort(
            context,
            grpc.StatusCode.UNAUTHENTICATED,
            AccessDenied("no client certificate", rule="auth.certificate"),
        )
    return peer


class Authoriser(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, revoked: RevokedCertificates, audit: AuditTrail) -> None:
        self.revoked = revoked
        self.audit = audit

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                self._admit(method, context)
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._admit(method, context)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        inner_bidi = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            self._admit(method, context)
            yield from inner_bidi(requests, context)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )

    def _admit(self, method: str, context: grpc.ServicerContext) -> None:
        peer = peer_of(context)
        refusal: tuple[grpc.StatusCode, AccessDenied] | None = None
        if peer is None:
            refusal = (
                grpc.StatusCode.UNAUTHENTICATED,
                AccessDenied(
                    "the call carries no client certificate",
                    rule="auth.certificate",
                    fix="connect with a certificate of this network's CA",
                ),
            )
        elif self.revoked.is_revoked(peer.serial):
            refusal = (
                grpc.StatusCode.UNAUTHENTICATED,
                AccessDenied(
                    f"the certificate of {peer.name} ({peer.role}) has been revoked",
                    rule="auth.revoked",
                    fix="ask the network's CA for a new certificate",
                ),
            )
        elif peer.role not in ROLES_BY_METHOD.get(method, frozenset()):
            refusal = (
                grpc.StatusCode.PERMISSION_DENIED,
                AccessDenied(
                    f"role {peer.role!r} may not call {method.rsplit('/', 1)[-1]}",
                    rule="auth.role",
                    fix="use a certificate of a role allowed to do this (docs/operators.md)",
                ),
            )
        if refusal is None:
            return
        code, error = refusal
        log.warning("refused %s from %s: %s", method, peer, error.one_line())
        self.audit.append(
            actor=f"{peer.role}:{peer.name}" if peer else "",
            action=method.rsplit("/", 1)[-1],
            outcome="AccessDenied",
            rule=error.rule,
            peer=str(context.peer()),
        )
        abort(context, code, error)


__all__ = ["ROLES_BY_METHOD", "Authoriser", "abort", "caller"]
