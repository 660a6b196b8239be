"""Ingress status: the address clients reach Envoy at, written by the leader only.

The address comes from the Envoy Service's own status (`status.loadBalancer.ingress`, set
by the cloud's load balancer), or from `--status-address` where there is none (kind,
NodePort). An Ingress is patched only when its status differs, and the patch comes back
through the watch as a change that alters no Envoy resource, so nothing is pushed and
nothing loops.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from xds_server.kube_api import REQUEST_TIMEOUT
from xds_server.sources.objects import KubeObject

log = logging.getLogger("xds_server.status")


def addresses(
    objects: Iterable[KubeObject], service: tuple[str, str], fixed: list[str]
) -> list[dict[str, str]]:
    """The load-balancer entries every served Ingress should carry."""
    if fixed:
        return [_entry(address) for address in fixed]
    for obj in objects:
        if obj.kind == "Service" and (obj.namespace, obj.name) == service:
            found = ((obj.body.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            return [
                {k: v for k, v in entry.items() if k in ("ip", "hostname")} for entry in found or []
            ]
    return []


def _entry(address: str) -> dict[str, str]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"hostname": address}
    return {"ip": address}


def stale(
    objects: Iterable[KubeObject], served: set[tuple[str, str]], wanted: list[dict[str, str]]
) -> list[KubeObject]:
    """Served Ingresses whose status is not `wanted` yet."""
    found = []
    for obj in objects:
        if obj.kind != "Ingress" or (obj.namespace, obj.name) not in served:
            continue
        current = ((obj.body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if current != wanted:
            found.append(obj)
    return found


class StatusWriter:
    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api: Any = client.NetworkingV1Api(api_client)

    def write(self, ingresses: list[KubeObject], wanted: list[dict[str, str]]) -> int:
        """Patch each; return how many were written (a failure is logged, not raised)."""
        written = 0
        for obj in ingresses:
            body = {"status": {"loadBalancer": {"ingress": wanted}}}
            try:
                self.api.patch_namespaced_ingress_status(
                    obj.name,
                    obj.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            except Exception as exc:
                log.warning("status of Ingress %s/%s not written: %s", obj.namespace, obj.name, exc)
                continue
            written += 1
        return written
