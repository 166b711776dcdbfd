"""``oncofed console``: a local web console for data-access bodies, researchers and operators.

Each person runs their own, on their own machine, with their own keys: it
binds 127.0.0.1 and prints a link with a one-time token (``security``). The
body's, the researcher's and the operator's pages are ``body``,
``researcher`` and ``operator``; docs/console.md shows them.
"""

from oncofed.client.console.app import ConsoleRole, ConsoleSettings, create_app
from oncofed.client.console.security import ConsoleKeys
from oncofed.client.console.server import serve

__all__ = ["ConsoleKeys", "ConsoleRole", "ConsoleSettings", "create_app", "serve"]
