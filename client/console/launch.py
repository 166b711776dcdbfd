"""Which console to open: the role comes from the credentials' certificate, or ``--node``."""

from __future__ import annotations

from pathlib import Path

from oncofed.client.console.app import ConsoleSettings
from oncofed.kernel.errors import ConfigError

CONSOLE_FOLDER = "console"


def console_settings(credentials: Path, coordinator: str, node: Path | None) -> ConsoleSettings:
    """A body's or researcher's console from their credentials, an operator's from a node config.

    The console keeps its own files (the tasks it submitted, their results) in a
    ``console`` folder beside what it reads: the person's credentials folder, or
    the node's state folder.
    """
    if node is not None:
        from oncofed.node.config import load_node_config

        config = load_node_config(node)
        return ConsoleSettings(
            role="operator",
            state_dir=config.state_dir / CONSOLE_FOLDER,
            node_config=node.resolve(),
        )
    from oncofed.governance.keys import Identity

    folder = credentials.expanduser().resolve()
    role = Identity.load(folder).card.role
    if role not in ("hdab", "researcher"):
        raise ConfigError(
            f"the credentials in {folder} are a {role}'s; the console is for data-access "
            "bodies, researchers and node operators",
            rule="console.role",
            fix="pass a body's or a researcher's --credentials, or --node CONFIG for a node",
        )
    return ConsoleSettings(
        role=role,
        state_dir=folder / CONSOLE_FOLDER,
        credentials=folder,
        coordinator=coordinator,
    )


__all__ = ["CONSOLE_FOLDER", "console_settings"]
