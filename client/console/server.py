"""Serving a console on 127.0.0.1 and printing its one-time link."""

from __future__ import annotations

import socket
import webbrowser
from collections.abc import Callable

import uvicorn

from oncofed.client.console.app import ConsoleSettings, create_app
from oncofed.client.console.security import ConsoleKeys, start_url

HOST = "127.0.0.1"


def serve(
    settings: ConsoleSettings,
    port: int = 0,
    open_browser: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Run until interrupted. ``port`` 0 takes a free one; the link is announced once bound."""
    keys = ConsoleKeys()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    url = start_url(HOST, listener.getsockname()[1], keys)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, keys), log_level="warning", access_log=False)
    )
    announce(url)
    if open_browser:
        webbrowser.open(url)
    server.run(sockets=[listener])


__all__ = ["HOST", "serve"]
