"""The coordinator process: database, task runner and the gRPC services, over mutual TLS."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from oncofed.coordinator.access_store import AccessStore
from oncofed.coordinator.auth import Authoriser
from oncofed.coordinator.data_access import DataAccess
from oncofed.coordinator.db import open_database
from oncofed.coordinator.hub import Hub
from oncofed.coordinator.nodelink import NodeLink
from oncofed.coordinator.operator import Operator
from oncofed.coordinator.researcher import Researcher
from oncofed.coordinator.runner import TaskRunner
from oncofed.coordinator.store import Store
from oncofed.governance.audit import DEFAULT_RETENTION_DAYS, AuditTrail
from oncofed.governance.keys import Identity
from oncofed.governance.tls import RevokedCertificates, TlsFiles, server_credentials
from oncofed.kernel.errors import ConfigError
from oncofed.kernel.flower import install_process_identity
from oncofed.kernel.wire import SERVER_OPTIONS
from oncofed.kernel.wire import oncofed_pb2_grpc as rpc

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(
        self,
        database_url: str,
        credentials: Path,
        listen: str = "127.0.0.1:7100",
        heartbeat_seconds: float = 5.0,
        max_parallel_tasks: int = 4,
        crl: Path | None = None,
        audit_retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        install_process_identity()
        self.tls = TlsFiles.in_directory(credentials)
        identity = Identity.load(credentials)
        engine = open_database(database_url)
        self.store = Store(engine)
        self.access = AccessStore(engine)
        self.audit = AuditTrail(engine, identity.signing, create=False)
        self.audit_retention_days = audit_retention_days
        self.hub = Hub()
        self.runner = TaskRunner(self.store, self.access, self.hub, max_parallel_tasks)
        self.listen = listen
        revoked = RevokedCertificates(crl, self.tls.ca)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=256),
            options=SERVER_OPTIONS,
            interceptors=[Authoriser(revoked, self.audit)],
        )
        rpc.add_NodeLinkServicer_to_server(
            NodeLink(self.store, self.hub, heartbeat_seconds, self.audit, revoked), self._server
        )
        rpc.add_ResearcherServicer_to_server(
            Researcher(self.store, self.access, self.runner, self.hub, self.audit), self._server
        )
        rpc.add_OperatorServicer_to_server(Operator(self.store), self._server)
        rpc.add_DataAccessServicer_to_server(
            DataAccess(self.access, self.store, self.hub, self.audit), self._server
        )
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    def start(self) -> int:
        """Serve; returns the bound port (useful with port 0)."""
        # Streams from before a restart are gone; nodes will say hello again.
        self.store.mark_all_offline()
        pruned = self.audit.prune(time.time() - self.audit_retention_days * 86_400)
        if pruned:
            log.info("audit trail: %d entries older than the retention period removed", pruned)
        try:
            port = self._server.add_secure_port(self.listen, server_credentials(self.tls))
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {self.listen}: {exc}",
                rule="coordinator.listen",
                fix="choose a free host:port",
            ) from None
        self._server.start()
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        resumed = self.runner.recover()
        log.info("coordinator listening on port %d (%d task(s) resumed)", port, resumed)
        return int(port)

    def stop(self, grace: float = 2.0) -> None:
        self._health.enter_graceful_shutdown()
        self.runner.shutdown()
        self._server.stop(grace).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()


__all__ = ["Coordinator"]
