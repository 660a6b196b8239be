"""Kubernetes objects as the sources hand them on: parsed from YAML or JSON text, one
`KubeObject` per object of a kind we route, the same shape whichever source read it.

A document that is not an object of ours is skipped silently (other kinds) or rejected with
one line naming its source, kind and name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from xds_server.sources import schema

KNOWN_KINDS = {
    ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "IngressClass"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "Secret"),
    ("v1", "Namespace"),
    *(
        (f"gateway.networking.k8s.io/{version}", kind)
        for version in ("v1", "v1beta1")
        for kind in ("GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant")
    ),
    ("gateway.networking.k8s.io/v1alpha2", "ReferenceGrant"),
    # Only its annotations are read: the Gateway API version installed.
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when present: ten times faster on big manifests."""


@dataclass(frozen=True)
class KubeObject:
    api_version: str
    kind: str
    namespace: str
    name: str
    body: dict[str, Any]
    source: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass
class Loaded:
    objects: list[KubeObject] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    index: dict[tuple[str, str, str], KubeObject] | None = None
    """The same objects by key, when the source keeps them so (no need to build it again)."""
    follows: Loaded | None = field(default=None, repr=False, compare=False)
    changed: frozenset[tuple[str, str, str]] = frozenset()
    """With `follows`: the keys whose object differs from the one there (every other object
    is the very same), so a consumer of both need not compare them all."""

    def by_key(self) -> dict[tuple[str, str, str], KubeObject]:
        """Objects by (kind, namespace, name); the first of two with the same key wins."""
        if self.index is None:
            self.index = {}
            for obj in self.objects:
                self.index.setdefault(obj.key, obj)
        return self.index


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one file may cause: each has a `serve` flag and a clear rejection."""

    file_bytes: int = 16 * 2**20
    """A manifest larger than this is not read (the API server keeps objects under 1.5 MiB)."""
    documents: int = 10_000
    """YAML documents in one file."""
    values: int = 1_000_000
    """Values in one document once YAML aliases are expanded (an alias bomb has billions)."""
    depth: int = 64
    """Nesting of one document (Kubernetes objects need about fifteen levels)."""
    objects: int = 100_000
    """Objects in all the manifests together."""
    files: int = 20_000
    """Manifest files in the directory tree."""


class TooMuch(ValueError):
    """Input beyond a limit: rejected before anything expensive is done with it."""


def _documents(text: str, source: str, limits: Limits) -> list[Any]:
    """JSON (a subset of YAML) parses 50x faster, so a JSON file is read as JSON."""
    if source.endswith(".json") or text.lstrip().startswith(("{", "[")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            pass  # YAML flow style can look like JSON; let the YAML parser judge
        else:
            return [document] if document is not None else []
    documents = []
    try:
        for doc in yaml.load_all(text, Loader=_LOADER):
            if doc is not None:
                documents.append(doc)
            if len(documents) > limits.documents:
                raise TooMuch(f"{source}: more than {limits.documents} documents (--max-documents)")
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return documents


def _check_shape(document: Any, source: str, limits: Limits) -> None:
    """Count every value as the model would meet it (an alias counts each time it is used),
    and stop at the first bound crossed: the walk costs at most `limits.values` steps."""
    budget = limits.values
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        budget -= 1
        if budget < 0:
            raise TooMuch(
                f"{source}: more than {limits.values} values once YAML aliases are expanded"
                " (--max-values)"
            )
        if depth > limits.depth:
            raise TooMuch(f"{source}: nested deeper than {limits.depth} levels (--max-depth)")
        if isinstance(value, dict):
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)


def parse_documents(text: str, source: str, limits: Limits | None = None) -> Loaded:
    """Objects of one file; raise ValueError when the file itself cannot be used."""
    limits = limits or Limits()
    try:
        documents = _documents(text, source, limits)
        for document in documents:
            _check_shape(document, source, limits)
    except RecursionError:
        raise TooMuch(f"{source}: nested too deeply to parse (--max-depth)") from None
    loaded = Loaded()
    for document in documents:
        for item in _items(document, source, loaded):
            _add(loaded, item, source)
    return loaded


def parse_item(item: dict[str, Any], source: str, limits: Limits) -> Loaded:
    """One object as the API server gave it, checked like one from a file."""
    loaded = Loaded()
    try:
        _check_shape(item, source, limits)
    except TooMuch as exc:
        loaded.errors.append(str(exc))
        return loaded
    _add(loaded, item, source)
    return loaded


def _add(loaded: Loaded, item: Any, source: str) -> None:
    obj, error = _object(item, source)
    if error:
        loaded.errors.append(error)
    elif obj is not None:
        loaded.objects.append(obj)


def _items(document: Any, source: str, loaded: Loaded) -> list[Any]:
    """A `…List` document's items, or the document itself."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List")):
        return [document]
    items = document.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        loaded.errors.append(f"{source}: {kind}: items must be a list")
        return []
    return items


def _object(item: Any, source: str) -> tuple[KubeObject | None, str | None]:
    if not isinstance(item, dict):
        return None, f"{source}: a document is not a mapping"
    api_version, kind = item.get("apiVersion"), item.get("kind")
    metadata = item.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    namespace = metadata.get("namespace") or "default" if isinstance(metadata, dict) else "?"
    shown = [v if isinstance(v, str) else "?" for v in (kind, namespace, name)]
    label = f"{source}: {shown[0]} {shown[1]}/{shown[2]}"
    if not isinstance(api_version, str) or not isinstance(kind, str) or not isinstance(name, str):
        return None, f"{label}: needs apiVersion, kind and metadata.name (strings)"
    if (api_version, kind) not in KNOWN_KINDS:
        return None, None  # other kinds are not ours: ignored silently
    try:
        schema.check(kind, item)
    except schema.Invalid as exc:
        return None, f"{label}: {exc}"
    schema.default(kind, item)
    return KubeObject(api_version, kind, namespace, name, item, source), None
