"""The pipeline's last line of defence: what the model lets through but Envoy's own rules
refuse is traced to its object, which alone is rejected; the rest is published."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bench.lab.xds import endpoint_slice, ingress, rule, service
from xds_server.model import ingress as ingress_model
from xds_server.model.types import EXACT, PREFIX
from xds_server.pipeline import Pipeline
from xds_server.sources.objects import parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.type_urls import VHOST


def trusting_route(path: dict[str, Any], where: str) -> tuple[str, str]:
    """The model's path check as if it had a gap: anything goes."""
    value = str(path.get("path") or "/")
    return (value, EXACT) if path["pathType"] == EXACT else (value, PREFIX)


def test_an_object_envoy_would_refuse_is_rejected_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress_model, "_route", trusting_route)
    documents = [
        service("a", [("http", 80)]),
        endpoint_slice("a", "http", 9000, ["10.0.0.1"]),
        ingress("good", [rule("good.example", ("/", "Prefix", "a", 80))]),
        ingress("bad", [rule("bad.example", ("/x?y", "Prefix", "a", 80))]),
        ingress("shares", [rule("good.example", ("/more", "Prefix", "a", 80))]),
    ]
    loaded = parse_documents(yaml.safe_dump_all(documents), "m.yaml")
    built = Pipeline(None, EnvoyPorts()).build(loaded, 1)
    assert built.problems == []
    assert built.snapshot is not None
    vhosts = set(built.snapshot.entries(VHOST))
    assert "ingress_http/good.example" in vhosts
    assert not any("bad.example" in name for name in vhosts)
    (error,) = built.model.errors
    assert error.startswith("m.yaml: Ingress default/bad: Envoy would refuse VirtualHost")
    assert "path_separated_prefix" in error
    routes = built.snapshot.entries(VHOST)["ingress_http/good.example"].decoded()
    unsplit = [r for r in routes.routes if not r.match.headers]  # type: ignore[attr-defined]
    assert len(unsplit) == 2, "a good Ingress sharing the host is kept (each route also has"
    # its safe-methods twin, translate/retries.py)
