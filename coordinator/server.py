"""The coordinator process: database, task runner and the three gRPC services."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from oncofed.coordinator.db import open_database
from oncofed.coordinator.hub import Hub
from oncofed.coordinator.nodelink import NodeLink
from oncofed.coordinator.operator import Operator
from oncofed.coordinator.researcher import Researcher
from oncofed.coordinator.runner import TaskRunner
from oncofed.coordinator.store import Store
from oncofed.errors import ConfigError
from oncofed.flower import install_process_identity
from oncofed.wire import SERVER_OPTIONS
from oncofed.wire import oncofed_pb2_grpc as rpc

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(
        self,
        database_url: str,
        listen: str = "127.0.0.1:7100",
        heartbeat_seconds: float = 5.0,
        max_parallel_tasks: int = 4,
    ) -> None:
        install_process_identity()
        self.store = Store(open_database(database_url))
        self.hub = Hub()
        self.runner = TaskRunner(self.store, self.hub, max_parallel_tasks)
        self.listen = listen
        self._server = grpc.server(ThreadPoolExecutor(max_workers=256), options=SERVER_OPTIONS)
        rpc.add_NodeLinkServicer_to_server(
            NodeLink(self.store, self.hub, heartbeat_seconds), self._server
        )
        rpc.add_ResearcherServicer_to_server(
            Researcher(self.store, self.runner, self.hub), self._server
        )
        rpc.add_OperatorServicer_to_server(Operator(self.store), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    def start(self) -> int:
        """Serve; returns the bound port (useful with port 0)."""
        # Streams from before a restart are gone; nodes will say hello again.
        self.store.mark_all_offline()
        try:
            port = self._server.add_insecure_port(self.listen)
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
