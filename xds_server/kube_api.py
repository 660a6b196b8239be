"""Small helpers over the `kubernetes` client, shared by everything that reads or writes
objects one by one (Secrets, Leases)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

REQUEST_TIMEOUT = 5.0
"""Seconds one read or write of a single object may take: an API server that stops
answering must not hold a lease renewal, a status write or a SIGTERM's lease release until
the kubelet's SIGKILL."""


def read_json(read: Callable[..., Any], name: str, namespace: str) -> dict[str, Any] | None:
    """The object as the API sent it (raw JSON, no model classes), or None when it does not
    exist; any other error is raised."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = read(name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    found: dict[str, Any] = json.loads(response.data)
    return found
