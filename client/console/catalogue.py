"""The network's datasets as the coordinator knows them: who offers each, with which columns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from oncofed.kernel.wire import oncofed_pb2 as pb


@dataclass
class CatalogueEntry:
    """One dataset across the nodes that offer it (schemas agree on a well-run network)."""

    dataset: str
    nodes: list[str] = field(default_factory=list)
    online: list[str] = field(default_factory=list)
    columns: dict[str, dict[str, object]] = field(default_factory=dict)


def catalogue(nodes: list[pb.NodeInfo]) -> dict[str, CatalogueEntry]:
    """Each dataset's entry, from the schemas nodes declared when they connected."""
    entries: dict[str, CatalogueEntry] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        for name, schema in json.loads(node.datasets_json or "{}").items():
            entry = entries.setdefault(name, CatalogueEntry(name))
            entry.nodes.append(node.name)
            if node.online:
                entry.online.append(node.name)
            for column, spec in schema.get("columns", {}).items():
                entry.columns.setdefault(column, spec)
    return dict(sorted(entries.items()))


__all__ = ["CatalogueEntry", "catalogue"]
