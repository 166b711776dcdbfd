"""Serving a console on 127.0.0.1 and printing its one-time link."""

from __future__ import annotations

import html
import socket
import webbrowser
from collections.abc import Callable
from pathlib import Path

import uvicorn

from oncofed.client.console.app import ConsoleSettings, create_app
from oncofed.client.console.security import ConsoleKeys, start_url
from oncofed.governance.keys import write_private

HOST = "127.0.0.1"
OPENER = "open-console.html"


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
        webbrowser.open(_opener(settings.state_dir, url).as_uri())
    server.run(sockets=[listener])


def _opener(folder: Path, url: str) -> Path:
    """A page readable by this user only that forwards to ``url``, for the browser to open.

    A browser started with the link itself would carry the token in its command line,
    which every user of the machine can read (``ps``); one of them could redeem it first.
    As Jupyter does, the browser is given this file instead.
    """
    page = folder / OPENER
    page.unlink(missing_ok=True)
    link = html.escape(url, quote=True)
    write_private(
        page,
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={link}"><title>oncofed console</title>'
        f'</head><body><p><a href="{link}">Open the oncofed console</a></p></body></html>'.encode(),
    )
    return page


__all__ = ["HOST", "OPENER", "serve"]
