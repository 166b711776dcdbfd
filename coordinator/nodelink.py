"""The node-facing API: one long-lived bidirectional stream per node."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from oncofed.coordinator.auth import caller
from oncofed.coordinator.hub import Hub
from oncofed.coordinator.store import Store
from oncofed.governance.audit import AuditTrail
from oncofed.governance.tls import RevokedCertificates
from oncofed.kernel.flower import from_bytes, reply_error
from oncofed.kernel.schema import NAME_PATTERN, DatasetSchema
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import NodeLinkServicer

log = logging.getLogger(__name__)

MISSED_HEARTBEATS = 3  # a node silent this many intervals is offline
PENDING_APPROVAL = "node.approval_pending"
APPROVAL_RETRY_SECONDS = (2.0, 30.0)
"""How soon a message a node holds for its operator's approval is sent to it again: after
2 s at first, then a tenth of the time it has waited, at most 30 s."""


def approval_retry(waited: float) -> float:
    low, high = APPROVAL_RETRY_SECONDS
    return min(high, max(low, waited / 10))


class NodeLink(NodeLinkServicer):
    def __init__(
        self,
        store: Store,
        hub: Hub,
        heartbeat_seconds: float,
        audit: AuditTrail,
        revoked: RevokedCertificates,
    ) -> None:
        self.store = store
        self.hub = hub
        self.heartbeat_seconds = heartbeat_seconds
        self.audit = audit
        self.revoked = revoked

    def Connect(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[pb.NodeFrame], context: grpc.ServicerContext
    ) -> Iterator[pb.CoordinatorFrame]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("frame") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be a hello")
            return  # abort raises; this line tells the type checker so
        hello = first.hello
        problem = _check_hello(hello)
        peer = caller(context)
        if not problem and hello.node_name != peer.name:
            # The certificate, not the hello, says who a node is.
            problem = f"a node with the certificate of {peer.name!r} said it is {hello.node_name!r}"
        if problem:
            self.audit.append(
                actor=peer.name,
                action="connect",
                outcome="refused",
                rule="node.hello",
                problem=problem,
            )
            log.warning("refused node hello: %s", problem)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        token = self.hub.claim(hello.node_name)
        if token is None:
            log.warning("refused a second connection for node %s", hello.node_name)
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"a node named {hello.node_name!r} is already connected; "
                "each node needs its own name",
            )
        try:
            yield from self._serve(hello, peer.serial, token, request_iterator, context)
        finally:
            self.hub.release(hello.node_name, token)

    def _serve(
        self,
        hello: pb.NodeHello,
        serial: int,
        token: object,
        request_iterator: Iterator[pb.NodeFrame],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.CoordinatorFrame]:
        node_id = self.store.register_node(hello.node_name, hello.version, hello.datasets_json)
        self.audit.append(
            actor=hello.node_name, action="connect", outcome="connected", version=hello.version
        )
        again = self.store.requeue_unanswered(node_id)
        log.info(
            "node %s connected (id %d, version %s, %d message(s) to resend)",
            hello.node_name,
            node_id,
            hello.version,
            again,
        )
        wake = self.hub.node_event(node_id)
        closed = threading.Event()
        heard = [time.monotonic()]  # last frame from the node, written by the reader

        first_close = threading.Lock()

        def on_close() -> None:
            # Runs from gRPC's termination callback, the reader and the generator; only the
            # first may act, or a late one would mark a node offline that has reconnected.
            if not first_close.acquire(blocking=False):
                return
            self.store.set_online(node_id, False)
            self.hub.release(hello.node_name, token)
            closed.set()
            wake.set()
            log.info("node %s disconnected", hello.node_name)

        context.add_callback(on_close)
        threading.Thread(
            target=self._read,
            args=(request_iterator, node_id, heard, on_close),
            daemon=True,
            name=f"node-{hello.node_name}",
        ).start()
        yield pb.CoordinatorFrame(
            welcome=pb.Welcome(node_id=node_id, heartbeat_seconds=self.heartbeat_seconds)
        )
        try:
            while not closed.is_set():
                silent = time.monotonic() - heard[0]
                if silent > MISSED_HEARTBEATS * self.heartbeat_seconds:
                    # A frozen node keeps its TCP connection open; silence is what tells.
                    log.warning("node %s silent for %.1f s; dropping it", hello.node_name, silent)
                    return
                if self.revoked.is_revoked(serial):
                    # The interceptor admits a call once; a stream lives for days.
                    log.warning("node %s's certificate was revoked; closing", hello.node_name)
                    self.audit.append(
                        actor=hello.node_name,
                        action="connect",
                        outcome="AccessDenied",
                        rule="auth.revoked",
                    )
                    return
                wake.clear()  # before reading the queue, so no notification is lost
                for _message_id, payload in self.store.take_undelivered(node_id):
                    yield pb.CoordinatorFrame(task=payload)
                if not wake.wait(self.heartbeat_seconds):
                    yield pb.CoordinatorFrame(heartbeat=pb.Heartbeat())
        finally:
            on_close()

    def _read(
        self,
        frames: Iterator[pb.NodeFrame],
        node_id: int,
        heard: list[float],
        on_close: Callable[[], None],
    ) -> None:
        try:
            for frame in frames:
                heard[0] = time.monotonic()
                kind = frame.WhichOneof("frame")
                if kind == "heartbeat":
                    self.store.set_online(node_id, True)
                elif kind == "reply":
                    self._store_reply(node_id, frame.reply)
        except grpc.RpcError:
            pass
        finally:
            on_close()

    def _store_reply(self, node_id: int, payload: bytes) -> None:
        try:
            reply = from_bytes(payload)
        except Exception:
            log.warning("node %d sent an unreadable reply; dropped", node_id)
            return
        message_id = reply.metadata.reply_to_message_id
        if reply.has_error() and reply_error(reply).rule == PENDING_APPROVAL:
            # The node stores the request and keeps its workers free; ask again later.
            task_id = self.store.defer(message_id, node_id, approval_retry)
            if task_id is not None:
                name = self.store.node_name(node_id)
                self.store.set_detail(task_id, f"waiting for the approval of {name}'s operator")
                self.hub.notify_progress()
            return
        if self.store.put_reply(message_id, node_id, payload):
            self.hub.notify_progress()
        else:
            log.warning(
                "node %d answered message %s that it was not sent or already answered; dropped",
                node_id,
                message_id,
            )


def _check_hello(hello: pb.NodeHello) -> str:
    if not re.match(NAME_PATTERN, hello.node_name):
        return f"node name {hello.node_name!r} is not valid"
    try:
        datasets = json.loads(hello.datasets_json or "{}")
        for schema in datasets.values():
            DatasetSchema.model_validate(schema)
    except (ValueError, AttributeError) as exc:
        return f"node {hello.node_name!r} sent an invalid dataset schema: {exc}"
    return ""


__all__ = ["NodeLink"]
