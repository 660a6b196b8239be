"""The Kubernetes API client the sidecar uses (events, its own Pod), loaded on first use.

The kubernetes package is heavy (about 40 MiB resident): an idle sidecar that never talks to
the API server never imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

REQUEST_TIMEOUT = 2.0
"""Seconds for one API request: the drain never waits longer on the API server."""


@dataclass(frozen=True)
class PodIdentity:
    """This pod, from the downward API (POD_NAME, POD_NAMESPACE and, if given, POD_UID)."""

    name: str
    namespace: str
    uid: str | None = None

    @classmethod
    def from_env(cls) -> PodIdentity | None:
        name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not (name and namespace):
            return None
        return cls(name, namespace, os.environ.get("POD_UID") or None)


def core_api() -> Any:
    """A CoreV1Api: in-cluster credentials, else $KUBECONFIG (read now: the client reads it
    only once, when first imported)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    return client.CoreV1Api()
