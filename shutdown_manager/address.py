"""Where Envoy's admin API lives (stdlib only: parsed before anything heavy is imported)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class AdminAddress:
    """Where the admin API lives: a unix socket path or a loopback/TCP base URL."""

    uds: str | None
    base_url: str

    def __str__(self) -> str:
        return f"unix://{self.uds}" if self.uds else self.base_url


_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def parse_admin_address(text: str) -> AdminAddress:
    """Parse `unix:///path/admin.sock` or `http://127.0.0.1:9901`; raise ValueError otherwise."""
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"unix admin address needs an absolute path: {text!r}")
        return AdminAddress(uds=path, base_url="http://envoy-admin")
    parts = urlsplit(text)
    if parts.scheme != "http" or not parts.netloc or not _HOSTPORT.match(parts.netloc):
        raise ValueError(
            f"admin address must be unix:///path/to/admin.sock or http://HOST:PORT, got {text!r}"
        )
    if parts.path not in ("", "/"):
        raise ValueError(f"admin address takes no path: {text!r}")
    return AdminAddress(uds=None, base_url=f"http://{parts.netloc}")
