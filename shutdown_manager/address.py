"""Where Envoy's admin API lives (stdlib only: parsed before anything heavy is imported)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class AdminAddress:
    """Where the admin API lives: a unix socket path or a loopback/TCP base URL."""

    uds: str | None
    base_url: str

    def __str__(self) -> str:
        return f"unix://{self.uds}" if self.uds else self.base_url


UNIX_PATH_MAX = 107
"""Bytes a unix socket's path may have on Linux (sun_path is 108, with its final NUL)."""
NAME_MAX, PATH_MAX = 255, 4095
"""Bytes of one path component, and of a whole path, Linux accepts."""


def file_path(text: str) -> Path:
    """A path the kernel can take (raise ValueError otherwise): an error now, in one line,
    rather than a traceback from the first call that uses it."""
    encoded = os.fsencode(text)
    if not encoded or b"\0" in encoded:
        raise ValueError(f"not a usable path: {text!r}")
    if len(encoded) > PATH_MAX:
        raise ValueError(f"path longer than {PATH_MAX} bytes: {text[:40]!r}…")
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise ValueError(f"a path component longer than {NAME_MAX} bytes: {text[:40]!r}…")
    return Path(text)


def socket_path(text: str) -> Path:
    """A unix socket's path: a file path that also fits in sun_path."""
    path = file_path(text)
    if len(os.fsencode(text)) > UNIX_PATH_MAX:
        raise ValueError(
            f"a unix socket path may have {UNIX_PATH_MAX} bytes at most, this one has"
            f" {len(os.fsencode(text))}: {text[:40]!r}…"
        )
    return path


_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def parse_admin_address(text: str) -> AdminAddress:
    """Parse `unix:///path/admin.sock` or `http://127.0.0.1:9901`; raise ValueError otherwise."""
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"unix admin address needs an absolute path: {text!r}")
        socket_path(path)
        return AdminAddress(uds=path, base_url="http://envoy-admin")
    parts = urlsplit(text)
    if parts.scheme != "http" or not parts.netloc or not _HOSTPORT.match(parts.netloc):
        raise ValueError(
            f"admin address must be unix:///path/to/admin.sock or http://HOST:PORT, got {text!r}"
        )
    if parts.path not in ("", "/"):
        raise ValueError(f"admin address takes no path: {text!r}")
    return AdminAddress(uds=None, base_url=f"http://{parts.netloc}")
