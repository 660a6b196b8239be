"""Small helpers over the `kubernetes` client, shared by everything that reads or writes
objects one by one (Secrets, Leases)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def read_json(read: Callable[..., Any], name: str, namespace: str) -> dict[str, Any] | None:
    """The object as the API sent it (raw JSON, no model classes), or None when it does not
    exist; any other error is raised."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = read(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    found: dict[str, Any] = json.loads(response.data)
    return found
