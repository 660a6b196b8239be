"""A command line run the way a user runs it: a fresh process, its output captured."""

from __future__ import annotations

import subprocess
import sys


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
