"""The operator API: which nodes exist, their versions and dataset schemas -- never data."""

from __future__ import annotations

import grpc

from oncofed.coordinator.store import Store
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import OperatorServicer


class Operator(OperatorServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def ListNodes(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.NodeList:  # noqa: N802
        return pb.NodeList(
            nodes=[
                pb.NodeInfo(
                    node_id=n.node_id,
                    name=n.name,
                    version=n.version,
                    online=n.online,
                    last_seen=n.last_seen,
                    datasets_json=n.datasets,
                )
                for n in self.store.nodes()
            ]
        )


__all__ = ["Operator"]
