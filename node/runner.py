"""The node process: one outbound stream to the coordinator, kept alive.

Hospital firewalls allow outbound connections only, so the node dials out,
says who it is and what it offers (schemas, never data), then computes the
task messages that arrive on the same stream with its installed ClientApp.
If the stream breaks it reconnects with exponential backoff and jitter; a
message it was computing when the stream broke is delivered again by the
coordinator after the reconnect.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from oncofed.governance.audit import AuditTrail
from oncofed.governance.tls import TlsFiles, client_channel
from oncofed.kernel.errors import TaskFailed
from oncofed.kernel.flower import error_reply, from_bytes, node_context, to_bytes
from oncofed.kernel.version import VERSION
from oncofed.kernel.wire import CHANNEL_OPTIONS
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import NodeLinkStub
from oncofed.node.app import build_client_app
from oncofed.node.config import NodeConfig
from oncofed.node.data import Catalogue
from oncofed.node.governance_state import GovernanceState
from oncofed.node.identity import load_or_create_identity, parse_public_key
from oncofed.node.permits import PermitChecker
from oncofed.node.secure import SecureKeys
from oncofed.node.status import StatusWriter
from oncofed.privacy.ledger import PrivacyLedger

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.sqlite"


class Backoff:
    """Exponential backoff with full jitter, reset after a successful session."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0) -> None:
        self.initial, self.maximum, self.attempt = initial, maximum, 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class NodeRunner:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.catalogue = Catalogue(
            config.name,
            config.datasets,
            config.policy,
            PrivacyLedger.at(config.state_dir, config.name),
        )
        self.tls = TlsFiles.in_directory(config.credentials)
        identity = load_or_create_identity(config.state_dir)
        self.audit = AuditTrail.open_sqlite(config.state_dir / AUDIT_FILE, identity)
        retention = config.governance.audit_retention_days * 86_400
        pruned = self.audit.prune(time.time() - retention)
        if pruned:
            log.info("audit trail: %d entries older than the retention period removed", pruned)
        checker = PermitChecker(
            config.name, config.governance, config.datasets, GovernanceState.at(config.state_dir)
        )
        secure = None
        if config.secure_aggregation is not None:
            secure = SecureKeys(
                identity,
                {
                    name: parse_public_key(text)
                    for name, text in config.secure_aggregation.peers.items()
                },
            )
        self.app = build_client_app(lambda _context: self.catalogue, self.audit, secure, checker)
        self._stop = threading.Event()
        self._call: Any = None  # the live stream call, cancelled by stop()
        self._pool = ThreadPoolExecutor(config.max_workers, thread_name_prefix="task")
        # For the operator only (`node/status.py`); the node never reads it back.
        self.status = StatusWriter(config.state_dir, config.coordinator, config.heartbeat_seconds)

    def hello(self) -> pb.NodeFrame:
        schemas = {name: s.model_dump(mode="json") for name, s in self.catalogue.schemas().items()}
        return pb.NodeFrame(
            hello=pb.NodeHello(
                node_name=self.config.name,
                version=VERSION,
                datasets_json=json.dumps(schemas, sort_keys=True),
            )
        )

    def run_forever(self) -> None:
        backoff = Backoff()
        self.status.enter("connecting")
        while not self._stop.is_set():
            try:
                if self._session():
                    backoff.reset()
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    log.error("the coordinator refused this node: %s", exc.details())
                    self.status.note(f"the coordinator refused this node: {exc.details()}")
                else:
                    log.warning("connection to %s lost (%s)", self.config.coordinator, code)
                    self.status.note(f"connection lost ({code.name if code else 'no code'})")
            delay = backoff.next_delay()
            log.info("reconnecting in %.1f s", delay)
            self._stop.wait(delay)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.status.enter("stopped")

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _session(self) -> bool:
        """One connection; returns whether the coordinator welcomed this node."""
        welcomed = False
        outbox: queue.Queue[pb.NodeFrame | None] = queue.Queue()
        alive = threading.Event()
        alive.set()

        def frames() -> Iterator[pb.NodeFrame]:
            yield self.hello()
            while True:
                frame = outbox.get()
                if frame is None:
                    return
                yield frame

        # The coordinator's interval wins when shorter: it drops nodes that miss three.
        interval = [self.config.heartbeat_seconds]

        def heartbeat() -> None:
            while not self._stop.wait(interval[0]) and alive.is_set():
                outbox.put(pb.NodeFrame(heartbeat=pb.Heartbeat(sent_at=time.time())))
                self.status.heartbeat()

        with client_channel(self.config.coordinator, self.tls, CHANNEL_OPTIONS) as channel:
            responses = NodeLinkStub(channel).Connect(frames())
            self._call = responses
            node_id = 0
            try:
                for frame in responses:
                    kind = frame.WhichOneof("frame")
                    if kind == "welcome":
                        node_id, welcomed = frame.welcome.node_id, True
                        if frame.welcome.heartbeat_seconds > 0:
                            interval[0] = min(interval[0], frame.welcome.heartbeat_seconds)
                        threading.Thread(target=heartbeat, daemon=True, name="heartbeat").start()
                        self.status.enter(
                            "connected", node_id=node_id, heartbeat_seconds=interval[0], detail=""
                        )
                        log.info(
                            "connected to %s as node %s (id %d)",
                            self.config.coordinator,
                            self.config.name,
                            node_id,
                        )
                    elif kind == "task":
                        self._pool.submit(self._handle, frame.task, node_id, outbox)
            finally:
                alive.clear()
                outbox.put(None)
                self._call = None
                if welcomed:
                    self.status.enter("disconnected")
        return welcomed

    def _handle(
        self, payload: bytes, node_id: int, outbox: queue.Queue[pb.NodeFrame | None]
    ) -> None:
        message = from_bytes(payload)
        context = node_context(node_id, message.metadata.run_id, {"node-name": self.config.name})
        try:
            reply = self.app(message, context)
        except Exception as exc:
            log.exception("ClientApp failed on %s", message.metadata.message_type)
            reply = error_reply(
                message,
                TaskFailed(
                    f"the node could not run {message.metadata.message_type!r} "
                    f"({type(exc).__name__})",
                    rule="node.client_app",
                    node=self.config.name,
                    fix="the node operator's log has the details",
                ),
            )
        outbox.put(pb.NodeFrame(reply=to_bytes(reply)))


__all__ = ["AUDIT_FILE", "Backoff", "NodeRunner"]
