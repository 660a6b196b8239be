"""One change of the input through the whole flow: objects -> model -> Envoy resources ->
snapshot. The process (app) runs it in a worker thread; the tests and the fuzzer run the very
same code. The memos of every stage live here, so an unchanged object costs nothing twice.

An object whose resources Envoy would refuse is rejected and the rest built again without it:
one bad object never takes the good ones down with it, and no proxy is sent what it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xds_server import collector
from xds_server.model.ingress import ModelMemo, build
from xds_server.model.types import Model, describe
from xds_server.sources.objects import Loaded
from xds_server.translate.envoy_rules import Checked
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.refusals import refusals
from xds_server.translate.resources import TranslationMemo, resources
from xds_server.xds.cache import EntryMemo, InconsistentSnapshot, Snapshot

REFUSAL_ROUNDS = 3
"""Builds per change at most: one, and one more per layer of objects Envoy would refuse
(their removal exposes no new refusal: each is judged on its own content)."""


@dataclass
class Built:
    model: Model
    snapshot: Snapshot | None
    """None: nothing may be published for this change (see `problems`)."""
    problems: list[str] = field(default_factory=list)
    """Why nothing is published: a refusal no object explains, or an inconsistent snapshot."""


class Pipeline:
    def __init__(self, ingress_class: str | None, ports: EnvoyPorts) -> None:
        self.ingress_class = ingress_class
        self.ports = ports
        self.models = ModelMemo()
        self.translations = TranslationMemo()
        self.entries = EntryMemo()
        self.checked = Checked()

    def build(self, loaded: Loaded, serial: int) -> Built:
        with collector.paused():
            return self._build(loaded, serial)

    def _build(self, loaded: Loaded, serial: int) -> Built:
        objects, refused = loaded.objects, []
        for _ in range(REFUSAL_ROUNDS):
            model = build(objects, self.ingress_class, self.models)
            translated = resources(model, self.ports, self.translations)
            found = refusals(model, translated, self.checked)
            if not found.blamed:
                break
            refused += [f"{origin}: {reason}" for origin, reason in found.blamed.items()]
            objects = [obj for obj in objects if describe(obj) not in found.blamed]
        model.errors[:0] = refused
        self.translations.forget_unused()
        self.checked.forget_unused()
        problems = found.unexplained + [f"still refused: {o}" for o in found.blamed]
        if problems:
            return Built(model, None, problems)
        try:
            return Built(model, Snapshot.build(translated, serial, self.entries))
        except InconsistentSnapshot as exc:
            return Built(model, None, [str(exc)])
