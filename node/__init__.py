"""The node a cancer centre runs: its config, local data, ClientApp, mods and audit log."""

from oncofed.node.config import NodeConfig, load_node_config

__all__ = ["NodeConfig", "load_node_config"]
