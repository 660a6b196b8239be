"""Gateway API status, written by the leader only, and only where it changed.

The model computes each object's status from the objects alone (the same on every
replica). Written to the API, conditions gain `lastTransitionTime` (kept from the object's
current condition while its status stays the same, as the API's conventions ask);
condition types someone else set stay as they are, and an HTTPRoute keeps the `parents`
entries other controllers wrote. An object whose status is
already that (times aside) is not written: the write comes back through the watch as a
change of status only, which alters no Envoy resource and writes nothing again.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from typing import Any

from xds_server.kube_api import REQUEST_TIMEOUT
from xds_server.sources.objects import KubeObject

log = logging.getLogger("xds_server.status")

GROUP = "gateway.networking.k8s.io"
PLURALS = {"GatewayClass": "gatewayclasses", "Gateway": "gateways", "HTTPRoute": "httproutes"}
Status = dict[str, Any]


def status_key(obj: KubeObject) -> str:
    if obj.kind == "GatewayClass":
        return f"{obj.kind}/{obj.name}"
    return f"{obj.kind}/{obj.namespace}/{obj.name}"


def pending(
    objects: Iterable[KubeObject], wanted: dict[str, Status], controller: str, now: str
) -> list[tuple[KubeObject, Status]]:
    """The objects whose status must be written, each with the status to write."""
    found = []
    for obj in objects:
        if obj.kind not in PLURALS:
            continue
        status = wanted.get(status_key(obj))
        if status is None:
            continue
        body = obj.body.get("status")
        current: Status = body if isinstance(body, dict) else {}
        if obj.kind == "HTTPRoute":
            status = _with_foreign_parents(status, current, controller)
        written = _timed(status, current, now)
        if _timeless(written) != _timeless(current):
            found.append((obj, written))
    return found


def _with_foreign_parents(status: Status, current: Status, controller: str) -> Status:
    foreign = [
        p
        for p in current.get("parents") or []
        if isinstance(p, dict) and p.get("controllerName") != controller
    ]
    return {**status, "parents": [*foreign, *status.get("parents", [])]}


def _timed(value: Any, current: Any, now: str) -> Any:
    """`value` with every condition list given its transition times: a condition keeps the
    time of the current one of its type while its status is the same."""
    if isinstance(value, dict):
        old = current if isinstance(current, dict) else {}
        return {k: _timed_field(k, v, old.get(k), now) for k, v in value.items()}
    return value


def _timed_field(key: str, value: Any, current: Any, now: str) -> Any:
    if key == "conditions" and isinstance(value, list):
        before = {c.get("type"): c for c in current or [] if isinstance(c, dict)}
        found = []
        for item in value:
            old = before.pop(item["type"], None) or {}
            same = old.get("status") == item["status"] and old.get("lastTransitionTime")
            found.append({**item, "lastTransitionTime": old["lastTransitionTime"] if same else now})
        return found + list(before.values())  # types others own: kept as they are
    if key in ("listeners", "parents") and isinstance(value, list):
        by_name = _entries_by_name(current)
        return [_timed(item, by_name.get(_entry_name(item)), now) for item in value]
    return _timed(value, current, now)


def _entry_name(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    ref = item.get("parentRef")
    if isinstance(ref, dict):
        return repr(sorted(ref.items())) + str(item.get("controllerName"))
    return str(item.get("name"))


def _entries_by_name(current: Any) -> dict[str, Any]:
    return {_entry_name(x): x for x in current or []} if isinstance(current, list) else {}


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GatewayStatusWriter:
    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api: Any = client.CustomObjectsApi(api_client)

    def write(self, items: list[tuple[KubeObject, Status]]) -> int:
        """Merge-patch each status; return how many were written (a failure is logged)."""
        written = 0
        for obj, status in items:
            body = {"status": status}
            plural = PLURALS[obj.kind]
            try:
                if obj.kind == "GatewayClass":
                    self.api.patch_cluster_custom_object_status(
                        GROUP, "v1", plural, obj.name, body, _request_timeout=REQUEST_TIMEOUT
                    )
                else:
                    self.api.patch_namespaced_custom_object_status(
                        GROUP, "v1", obj.namespace, plural, obj.name, body,
                        _request_timeout=REQUEST_TIMEOUT,
                    )  # fmt: skip
            except Exception as exc:
                log.warning("status of %s not written: %s", status_key(obj), exc)
                continue
            written += 1
        return written
