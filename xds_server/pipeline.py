"""One change of the input through the whole flow: objects -> model -> Envoy resources ->
snapshot. The process (app) runs it in a worker thread; the tests and the fuzzer run the very
same code. Every stage keeps its state here and is handed only what changed, so a change
costs what it touches: one Ingress changed among a thousand re-models, re-translates,
re-checks and re-serializes that Ingress' hosts alone.

An object whose resources Envoy would refuse is rejected and the rest built again without it:
one bad object never takes the good ones down with it, and no proxy is sent what it refuses.
It stays out while it is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from google.protobuf.message import Message

from xds_server import collector
from xds_server.model.gateway import GatewaySettings
from xds_server.model.gateway.attach import REFUSED_STATUS
from xds_server.model.gateway.types import status_key
from xds_server.model.state import Key, ModelState
from xds_server.model.types import Model, describe
from xds_server.sources.objects import KubeObject, Loaded
from xds_server.translate.envoy_rules import Checked
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.refusals import refusals
from xds_server.translate.resources import Changes, Translator
from xds_server.translate.type_urls import ENDPOINT
from xds_server.xds.cache import InconsistentSnapshot, Snapshot

REFUSAL_ROUNDS = 3
"""Builds per change at most: one, and one more per layer of objects Envoy would refuse
(their removal exposes no new refusal: each is judged on its own content)."""


@dataclass
class Built:
    model: Model
    """The model as of this change (its own copy: the next change does not alter it)."""
    snapshot: Snapshot | None
    """None: nothing may be published for this change (see `problems`)."""
    problems: list[str] = field(default_factory=list)
    """Why nothing is published: a refusal no object explains, or an inconsistent snapshot."""
    endpoints: EndpointNews = field(default_factory=lambda: EndpointNews())


@dataclass
class EndpointNews:
    """What this change did to endpoints, for the metrics once proxies have it."""

    triggered: list[float] = field(default_factory=list)
    """The last-change-trigger-time of each endpoint assignment changed (Unix time)."""
    fallbacks_started: list[str] = field(default_factory=list)
    """Clusters whose ready endpoints ran out: the terminating ones serve (KEP-1669)."""
    in_fallback: int = 0


class Pipeline:
    def __init__(
        self, ingress_class: str | None, ports: EnvoyPorts, gateway: GatewaySettings | None = None
    ) -> None:
        reserved = ((ports.address, ports.http), (ports.address, ports.https))
        settings = replace(gateway or GatewaySettings(), reserved=reserved)
        self.state = ModelState(ingress_class, settings)
        self.translator = Translator(ports)
        self.checked = Checked()
        self._input: dict[Key, KubeObject] = {}
        """The objects the model holds now."""
        self._refused: dict[Key, tuple[KubeObject, str]] = {}
        self._in_fallback: set[str] = set()
        self._triggers: dict[str, float] = {}
        """Each cluster's last-change-trigger-time already observed."""
        """Objects Envoy would refuse, with why: left out while they are unchanged."""
        self._unexplained: dict[tuple[str, str], list[str]] = {}
        """Resources Envoy would refuse for no object's sake (a flag, or our own bug)."""
        self._snapshot = Snapshot({}, 0)
        self._last: Loaded | None = None
        """The objects of the last build, when it completed: the next may say what differs."""

    def build(self, loaded: Loaded, serial: int) -> Built:
        with collector.paused():
            return self._build(loaded, serial)

    def _build(self, loaded: Loaded, serial: int) -> Built:
        objects = loaded.by_key()
        for key in [k for k, (obj, _) in self._refused.items() if objects.get(k) is not obj]:
            del self._refused[key]  # changed or gone: judged afresh
        follows, self._last = self._last, None
        if loaded.follows is not None and loaded.follows is follows:
            changes = self._changes_of(objects, loaded.changed)
        else:
            changes = self._changes(objects)
        translated: Changes = {}
        for _ in range(REFUSAL_ROUNDS):
            dirty = self.state.update(changes)
            for key, obj in changes.items():
                if obj is None:
                    self._input.pop(key, None)
                else:
                    self._input[key] = obj
            changed = self.translator.update(self.state.model, dirty)
            for type_url, messages in changed.items():
                translated.setdefault(type_url, {}).update(messages)
            found = refusals(self.state.model, changed, self.checked)
            for type_url, messages in changed.items():
                for name in messages:
                    self._unexplained.pop((type_url, name), None)
            self._unexplained.update(found.unexplained)
            if not found.blamed:
                break
            changes = self._refuse(found.blamed)
        self.checked.forget_unused()
        self._last = loaded
        news = self._endpoint_news(translated.get(ENDPOINT, {}))
        self._snapshot = self._snapshot.derive(translated, serial)
        model = self._model()
        problems = [reason for reasons in self._unexplained.values() for reason in reasons]
        problems += [f"still refused: {origin}" for origin in found.blamed]
        if problems:
            return Built(model, None, problems)
        try:
            self._snapshot.check()
        except InconsistentSnapshot as exc:
            return Built(model, None, [str(exc)])
        return Built(model, self._snapshot, endpoints=news)

    def _endpoint_news(self, assignments: Mapping[str, Message | None]) -> EndpointNews:
        news = EndpointNews()
        for name in assignments:
            backend = self.state.model.clusters.get(name)
            stamp = backend.triggered if backend is not None else None
            if stamp is not None and self._triggers.get(name) != stamp:
                news.triggered.append(stamp)  # once: not again when the Service alone changes
            if stamp is None:
                self._triggers.pop(name, None)
            else:
                self._triggers[name] = stamp
            if backend is not None and backend.fallback:
                if name not in self._in_fallback:
                    news.fallbacks_started.append(name)
                self._in_fallback.add(name)
            else:
                self._in_fallback.discard(name)
        news.in_fallback = len(self._in_fallback)
        return news

    def _changes(self, objects: dict[Key, KubeObject]) -> dict[Key, KubeObject | None]:
        """What differs between the objects the model holds and those it should hold: a
        source hands back the very same object for an unchanged one."""
        changes: dict[Key, KubeObject | None] = {
            key: obj
            for key, obj in objects.items()
            if self._input.get(key) is not obj and key not in self._refused
        }
        for key in self._input.keys() - objects.keys():
            changes[key] = None
        for key in self._refused.keys() & self._input.keys():
            changes[key] = None
        return changes

    def _changes_of(
        self, objects: dict[Key, KubeObject], keys: frozenset[Key]
    ) -> dict[Key, KubeObject | None]:
        """The same, when the source said which keys changed since the last build's input."""
        changes = {
            key: objects.get(key)
            for key in keys
            if self._input.get(key) is not objects.get(key) and key not in self._refused
        }
        for key in self._refused.keys() & self._input.keys():
            changes[key] = None
        return changes

    def _refuse(self, blamed: dict[str, str]) -> dict[Key, KubeObject | None]:
        """Leave out the objects blamed (as rejections name them); the changes that does."""
        changes: dict[Key, KubeObject | None] = {}
        for key, obj in self._input.items():
            reason = blamed.get(describe(obj))
            if reason is not None:
                self._refused[key] = (obj, f"{describe(obj)}: {reason}")
                changes[key] = None
        return changes

    def _model(self) -> Model:
        """A copy of the model for this change's readers (status, rejections, tests). A
        route left out for what Envoy would refuse says so in its own status."""
        model = self.state.model
        gateway = model.gateway
        refused = [(o, why) for o, why in self._refused.values() if o.kind in REFUSED_STATUS]
        if gateway is not None and refused:
            status = dict(gateway.status)
            ours = {key for key in status if key.startswith("Gateway/")}
            controller = self.state.gateway.controller
            for obj, why in refused:
                status[status_key(obj)] = REFUSED_STATUS[obj.kind](obj, why, controller, ours)
            gateway = replace(gateway, status=status)
        return replace(
            model,
            gateway=gateway,
            hosts=dict(model.hosts),
            clusters=dict(model.clusters),
            tls=list(model.tls),
            secrets=dict(model.secrets),
            errors=[reason for _, reason in self._refused.values()] + model.errors,
            served=set(model.served),
        )
