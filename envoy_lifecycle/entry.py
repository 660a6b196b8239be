"""The commands' entry points, guarded from their first instruction: a Ctrl-C that lands
while the modules are still being imported ends the command quietly, with status 130, like
one that lands later (no traceback for a user's own interrupt)."""

from __future__ import annotations

import importlib
import sys


def _run(module: str, prog: str) -> None:
    try:
        code = importlib.import_module(module).main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def shutdown_manager() -> None:
    _run("shutdown_manager.cli", "shutdown-manager")


def envoy_gateway() -> None:
    _run("shutdown_manager.envoy_gateway", "envoy-gateway")


def xds_server() -> None:
    _run("xds_server.cli", "xds-server")
