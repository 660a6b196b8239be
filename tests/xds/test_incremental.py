"""A change costs what changed, and gives what a build from nothing gives.

The pipeline keeps each stage's state and hands on only what changed; the directory source
re-reads only the files inotify names. Both are checked against doing everything afresh:
after every step of random change sequences, the incremental result (snapshot versions and
bytes, rejections, served Ingresses; objects and errors) equals a fresh one's.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.lab.xds import endpoint_slice, ingress, ingress_class, rule, service, tls_secret
from xds_server.certs import pki
from xds_server.pipeline import Built, Pipeline
from xds_server.sources import directory
from xds_server.sources.directory import DirectorySource, Scan
from xds_server.sources.objects import KubeObject, Loaded, parse_documents
from xds_server.sources.watch import Changes, DirectoryWatcher
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.type_urls import ROUTE
from xds_server.xds.cache import SNAPSHOT_KEYS

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
_CA = pki.issue_ca("incremental-ca", datetime.timedelta(days=1), "ecdsa-p256")
_LEAF = pki.issue_leaf(
    _CA, "leaf", ["a.example"], "server", datetime.timedelta(days=1), "ecdsa-p256"
)

SERVICES = ("a", "b", "c")
HOSTS = (None, "a.example", "b.example", "*.example", "*.a.example")
NAMES = ("i0", "i1", "i2", "i3", "i4")
STAMPS = (None, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")

paths: st.SearchStrategy[tuple[str, str, str, int | str]] = st.tuples(
    st.sampled_from(("/", "/x", "/x/", "/x/y", "/y")),
    st.sampled_from(("Exact", "Prefix", "ImplementationSpecific")),
    st.sampled_from((*SERVICES, "missing")),
    st.sampled_from((80, "http", 81)),
)
rules = st.tuples(st.sampled_from(HOSTS), st.lists(paths, min_size=1, max_size=3))


@st.composite
def an_ingress(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["defaultBackend"] = {
            "service": {"name": draw(st.sampled_from(SERVICES)), "port": {"number": 80}}
        }
    if draw(st.integers(0, 3)) == 0:
        hosts = draw(st.lists(st.sampled_from(HOSTS[1:]), max_size=2))
        spec["tls"] = [{"hosts": hosts, "secretName": draw(st.sampled_from(("good", "bad")))}]
    classes = (None, "ours", "theirs")
    named = draw(st.sampled_from(classes))
    if named:
        spec["ingressClassName"] = named
    body = ingress(
        draw(st.sampled_from(NAMES)), [rule(h, *p) for h, p in draw(st.lists(rules)) if p], **spec
    )
    stamp = draw(st.sampled_from(STAMPS))
    if stamp:
        body["metadata"]["creationTimestamp"] = stamp
    return body


def a_slice(name: str, draw: st.DrawFn) -> dict[str, Any]:
    addresses = draw(st.lists(st.sampled_from(("10.0.0.1", "10.0.0.2")), max_size=2))
    return endpoint_slice(name, "http", 8080, addresses, ready=draw(st.booleans()))


@st.composite
def a_step(draw: st.DrawFn) -> tuple[str, dict[str, Any] | tuple[str, str]]:
    """Put (create or replace) an object, or delete one by kind and name."""
    choice = draw(st.integers(0, 9))
    if choice <= 4:
        return ("put", draw(an_ingress()))
    if choice == 5:
        return ("delete", ("Ingress", draw(st.sampled_from(NAMES))))
    name = draw(st.sampled_from(SERVICES))
    if choice == 6:
        ports = draw(st.sampled_from(([("http", 80)], [("http", 81)], [("web", 80)])))
        return ("put", service(name, ports))
    if choice == 7:
        return ("put", a_slice(name, draw))
    if choice == 8:
        return ("delete", (draw(st.sampled_from(("Service", "EndpointSlice"))), name))
    return ("put", ingress_class("ours", default=draw(st.booleans())))


def _object(body: dict[str, Any]) -> KubeObject:
    (obj,) = parse_documents(yaml.safe_dump(body), "m.yaml").objects
    return obj


def _start() -> dict[tuple[str, str, str], KubeObject]:
    bodies = [
        *(service(n, [("http", 80)]) for n in SERVICES),
        *(endpoint_slice(n, "http", 8080, ["10.0.0.9"]) for n in SERVICES),
        tls_secret("good", _LEAF.certificate, _LEAF.key),
        tls_secret("bad", b"not", b"pem"),
    ]
    return {obj.key: obj for obj in map(_object, bodies)}


def _apply(
    objects: dict[tuple[str, str, str], KubeObject], step: tuple[str, Any]
) -> dict[tuple[str, str, str], KubeObject]:
    what, arg = step
    after = dict(objects)  # unchanged objects stay the very same objects, as a source keeps them
    if what == "put":
        obj = _object(arg)
        after[obj.key] = obj
    else:
        kind, name = arg
        for key in [k for k in after if k[0] == kind and k[2].startswith(name)]:
            del after[key]
    return after


def assert_same(incremental: Built, fresh: Built) -> None:
    assert sorted(incremental.model.errors) == sorted(fresh.model.errors)
    assert incremental.model.served == fresh.model.served
    assert incremental.problems == fresh.problems
    assert (incremental.snapshot is None) == (fresh.snapshot is None)
    if incremental.snapshot is None or fresh.snapshot is None:
        return
    for type_url in (*SNAPSHOT_KEYS, ROUTE):
        mine, theirs = incremental.snapshot.entries(type_url), fresh.snapshot.entries(type_url)
        assert {n: e.resource.value for n, e in mine.items()} == {
            n: e.resource.value for n, e in theirs.items()
        }, type_url
        assert incremental.snapshot.version(type_url) == fresh.snapshot.version(type_url)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(a_step(), min_size=1, max_size=12), st.sampled_from((None, "ours")))
def test_every_change_gives_what_a_build_from_nothing_gives(
    steps: list[tuple[str, Any]], ingress_class_flag: str | None
) -> None:
    pipeline = Pipeline(ingress_class_flag, EnvoyPorts())
    objects = _start()
    last = Loaded(list(objects.values()))
    pipeline.build(last, 1)
    for serial, step in enumerate(steps, start=2):
        before, objects = objects, _apply(objects, step)
        loaded = Loaded(list(objects.values()))
        if serial % 2:  # every other step says what changed, as the directory source does
            loaded.follows = last
            loaded.changed = frozenset(
                k for k in before.keys() | objects.keys() if before.get(k) is not objects.get(k)
            )
        incremental, last = pipeline.build(loaded, serial), loaded
        fresh = Pipeline(ingress_class_flag, EnvoyPorts()).build(
            Loaded(list(objects.values())), serial
        )
        assert_same(incremental, fresh)


def test_one_changed_ingress_touches_only_its_hosts() -> None:
    """What a change costs, counted: one Ingress among 200 changes two virtual hosts (its
    host, HTTP and HTTPS), nothing else is translated or serialized again."""
    bodies: list[dict[str, Any]] = [service("a", [("http", 80)]), service("b", [("http", 80)])]
    bodies += [endpoint_slice(n, "http", 8080, ["10.0.0.1"]) for n in "ab"]
    bodies += [
        ingress(f"i{n}", [rule(f"h{n}.example", ("/p", "Prefix", "a", 80))]) for n in range(200)
    ]
    objects = {obj.key: obj for obj in map(_object, bodies)}
    pipeline = Pipeline(None, EnvoyPorts())
    first = pipeline.build(Loaded(list(objects.values())), 1).snapshot
    changed = _object(ingress("i7", [rule("h7.example", ("/q", "Prefix", "a", 80))]))
    objects[changed.key] = changed
    calls: list[str] = []
    original = pipeline.translator._set

    def counting(changes: Any, type_url: str, name: str, message: Any) -> None:
        calls.append(name)
        original(changes, type_url, name, message)

    pipeline.translator._set = counting  # type: ignore[method-assign]
    second = pipeline.build(Loaded(list(objects.values())), 2).snapshot
    assert first is not None
    assert second is not None
    assert sorted(calls) == ["ingress_http/h7.example", "ingress_https/h7.example"]
    entries = [(t, n, e) for t in SNAPSHOT_KEYS if t != ROUTE for n, e in second.entries(t).items()]
    new = [n for t, n, e in entries if e is not first.entries(t).get(n)]
    assert sorted(new) == ["ingress_http/h7.example", "ingress_https/h7.example"]


# -- the directory source: the named files alone, as a full look would see them ----------------

FILES = ("a.yaml", "b.yaml", "sub/c.yaml", "d.json")


def _document(n: int) -> str:
    return yaml.safe_dump(service(f"s{n % 3}", [("http", 80 + n)]))


file_ops = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FILES), st.integers(0, 5)),
    st.tuples(st.just("rename"), st.sampled_from(FILES), st.integers(0, 5)),
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.just(0)),
    st.tuples(st.just("garbage"), st.sampled_from(FILES), st.just(0)),
    st.tuples(st.just("rmdir"), st.just("sub"), st.just(0)),
    st.tuples(st.just("link"), st.sampled_from(FILES), st.just(0)),
)


def _do(root: Path, op: tuple[str, str, int]) -> None:
    what, name, n = op
    path = root / name
    if what == "rmdir":
        shutil.rmtree(root / name, ignore_errors=True)
        return
    path.parent.mkdir(exist_ok=True)
    if what in ("write", "garbage") and path.is_symlink():
        # writing through the link would change a file outside the tree, which no event
        # here reports: that is the safety look's case, not this test's
        path.unlink()
    if what == "write":
        path.write_text(_document(n))  # in place: truncate, then write
    elif what == "rename":
        tmp = path.parent / f".{path.name}.tmp"
        tmp.write_text(_document(n))
        tmp.rename(path)
    elif what == "garbage":
        path.write_text("kind: [unclosed")
    elif what == "link":  # to a file of its own outside the tree
        target = root.parent / f"{root.name}-{name.replace('/', '-')}-{n}"
        target.write_text(_document(n + 1))
        path.unlink(missing_ok=True)
        path.symlink_to(target)
    else:
        path.unlink(missing_ok=True)


def _view(loaded: Loaded) -> tuple[dict[Any, Any], list[str]]:
    return {o.key: (o.source, o.body) for o in loaded.objects}, loaded.errors


@settings(max_examples=max(10, EXAMPLES // 5), deadline=None, derandomize=True)
@given(st.lists(file_ops, min_size=1, max_size=8))
def test_the_files_inotify_names_give_what_a_full_look_gives(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]]
) -> None:
    root = tmp_path_factory.mktemp("manifests")
    asyncio.run(_follow(root, ops))


async def _follow(root: Path, ops: list[tuple[str, str, int]]) -> None:
    source = DirectorySource(root)
    watcher = DirectoryWatcher()
    assert watcher.active
    try:
        looked = source.look()
        assert looked is not None
        assert looked[0] is not None
        watcher.watch(looked[0].directories)
        current = looked[1] or Loaded()
        last = looked[1]  # the source's own last answer (None: it has not given one)
        for op in ops:
            _do(root, op)
            changes = Changes()
            while await watcher.changed(0.05):  # every event of the step
                taken = watcher.take()
                changes.paths |= taken.paths
                changes.everything |= taken.everything
            looked = source.look(changes)
            assert looked is not None
            if looked[0] is not None:
                watcher.watch(looked[0].directories)
            if looked[1] is not None:  # says truly what differs from the one before
                assert looked[1].follows is last
                last = looked[1]
                before, after = current.by_key(), looked[1].by_key()
                differ = {
                    k for k in before.keys() | after.keys() if before.get(k) is not after.get(k)
                }
                assert looked[1].changed == differ
            current = looked[1] or current
            again = source.look(None)  # the safety look: did the events miss anything?
            assert again is not None
            assert again[1] is None, op
            if all(o[0] != "garbage" for o in ops):  # else this one keeps the last good objects
                assert _view(current) == _view(DirectorySource(root).load()), op
    finally:
        watcher.close()


def test_a_changed_file_is_read_alone(tmp_path: Path) -> None:
    """With inotify's names, one changed file among many is parsed alone and nothing else
    is stat'ed: no walk over the directory on the change path."""
    for n in range(50):
        (tmp_path / f"f{n}.yaml").write_text(yaml.safe_dump(service(f"t{n}", [("http", 80)])))
    source = DirectorySource(tmp_path)
    assert source.look() is not None
    (tmp_path / "f7.yaml").write_text(yaml.safe_dump(service("t7", [("http", 88)])))
    parsed: list[str] = []
    original = source._parse

    def counting(path: str, name: str, stamp: Any) -> Loaded:
        parsed.append(name)
        return original(path, name, stamp)

    source._parse = counting  # type: ignore[method-assign,assignment]
    source.scan = lambda: pytest.fail("a full look on the change path")  # type: ignore[method-assign]
    looked = source.look(Changes({tmp_path / "f7.yaml"}))
    assert looked is not None
    assert looked[1] is not None
    assert parsed == ["f7.yaml"]
    (changed,) = [o for o in looked[1].objects if o.name == "t7"]
    assert changed.body["spec"]["ports"][0]["port"] == 88


# -- the safety walk: beside the change path, and still the net --------------------------------


def _service_file(directory: Path, name: str, port: int) -> None:
    tmp = directory / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump(service(name, [("http", port)])))
    tmp.rename(directory / f"{name}.yaml")


async def test_a_change_is_not_kept_waiting_by_a_safety_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change read while the safety walk is under way (held here until the change is
    out) reaches the pipeline at once; the walk, stale, is not applied."""
    monkeypatch.setattr(directory, "SAFETY_POLL", 0.05)
    _service_file(tmp_path, "a", 80)
    source = DirectorySource(tmp_path)
    changes = cast(AsyncGenerator[Loaded, None], source.watch())
    first = await anext(changes)
    assert [o.name for o in first.objects] == ["a"]
    walking, release = threading.Event(), threading.Event()
    walk = source.scan

    def held_walk() -> Scan:
        walking.set()
        release.wait(10)
        return walk()

    source.scan = held_walk  # type: ignore[method-assign]
    following = asyncio.ensure_future(anext(changes))  # the consumer waits, as the app does
    try:
        assert await asyncio.to_thread(walking.wait, 5), "a safety walk started"
        _service_file(tmp_path, "b", 81)
        second = await asyncio.wait_for(following, 5)
        assert not release.is_set()
        assert sorted(o.name for o in second.objects) == ["a", "b"]
    finally:
        release.set()
        await changes.aclose()


async def test_the_safety_walk_finds_what_no_event_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest that is a symlink to a file outside the tree changes with no event in
    the tree: the walk finds it."""
    monkeypatch.setattr(directory, "SAFETY_POLL", 0.05)
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (outside / "a.yaml").write_text(yaml.safe_dump(service("a", [("http", 80)])))
    (tree / "a.yaml").symlink_to(outside / "a.yaml")
    changes = cast(AsyncGenerator[Loaded, None], DirectorySource(tree).watch())
    try:
        first = await anext(changes)
        assert first.objects[0].body["spec"]["ports"][0]["port"] == 80
        (outside / "a.yaml").write_text(yaml.safe_dump(service("a", [("http", 81)])))
        second = await asyncio.wait_for(anext(changes), 10)
        assert second.objects[0].body["spec"]["ports"][0]["port"] == 81
    finally:
        await changes.aclose()


async def test_a_wait_cancelled_as_the_change_comes_loses_nothing(tmp_path: Path) -> None:
    """The watch races the watcher against the safety walk and cancels the loser: the
    change that woke a cancelled wait must still be there to take (it was lost once, and
    found by the next walk a second later)."""
    watcher = DirectoryWatcher()
    try:
        watcher.watch([tmp_path])
        waiting = asyncio.create_task(watcher.ready(5))
        await asyncio.sleep(0)
        _service_file(tmp_path, "a", 80)
        while not watcher.pending:  # noqa: ASYNC110 (the state under test, not an event to await)
            await asyncio.sleep(0.001)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert watcher.pending
        assert tmp_path / "a.yaml" in watcher.take().paths
        assert not watcher.pending
    finally:
        watcher.close()


# -- the Gateway API part: HTTPRoutes are compiled and planned once per body --------------

GW = "gateway.networking.k8s.io"
GATEWAY_HOSTS = (None, "a.example", "*.example")


def a_gateway(draw: st.DrawFn) -> dict[str, Any]:
    listeners = [
        {"name": f"l{n}", "port": 8000 + n, "protocol": "HTTP",
         **({"hostname": h} if (h := draw(st.sampled_from(GATEWAY_HOSTS))) else {}),
         "allowedRoutes": {"namespaces": {"from": draw(st.sampled_from(("Same", "All")))}}}
        for n in range(draw(st.integers(1, 2)))
    ]  # fmt: skip
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": draw(st.sampled_from(("g0", "g1"))), "namespace": "default"},
        "spec": {"gatewayClassName": "ours", "listeners": listeners},
    }


def an_httproute(draw: st.DrawFn) -> dict[str, Any]:
    rules = [
        {
            "matches": [{"path": {"type": draw(st.sampled_from(("Exact", "PathPrefix"))),
                                  "value": draw(st.sampled_from(("/", "/x", "/x/y")))}}],
            "backendRefs": [{"name": draw(st.sampled_from((*SERVICES, "missing"))),
                             "port": 80, "weight": draw(st.sampled_from((0, 1, 3)))}],
        }
        for _ in range(draw(st.integers(1, 3)))
    ]  # fmt: skip
    spec: dict[str, Any] = {
        "parentRefs": [{"name": g} for g in draw(st.lists(st.sampled_from(("g0", "g1")),
                                                          min_size=1, max_size=2, unique=True))],
        "rules": rules,
    }  # fmt: skip
    hostnames = draw(st.lists(st.sampled_from(("a.example", "b.example", "*.example")), max_size=2))
    if hostnames:
        spec["hostnames"] = hostnames
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": draw(st.sampled_from(NAMES)), "namespace": "default"},
        "spec": spec,
    }


@st.composite
def a_gateway_step(draw: st.DrawFn) -> tuple[str, dict[str, Any] | tuple[str, str]]:
    choice = draw(st.integers(0, 9))
    if choice <= 4:
        return ("put", an_httproute(draw))
    if choice == 5:
        return ("delete", ("HTTPRoute", draw(st.sampled_from(NAMES))))
    if choice == 6:
        return ("put", a_gateway(draw))
    name = draw(st.sampled_from(SERVICES))
    if choice == 7:
        ports = draw(st.sampled_from(([("http", 80)], [("http", 81)])))
        return ("put", service(name, ports))
    if choice == 8:
        return ("put", a_slice(name, draw))
    if draw(st.booleans()):
        return ("delete", ("Service", name))
    return ("delete", ("Gateway", draw(st.sampled_from(("g0", "g1")))))


def _gateway_start() -> dict[tuple[str, str, str], KubeObject]:
    objects = _start()
    controller = "envoy-lifecycle.io/gateway-controller"
    gateway_class = {
        "apiVersion": f"{GW}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "ours"},
        "spec": {"controllerName": controller},
    }
    for obj in map(_object, [gateway_class]):
        objects[obj.key] = obj
    return objects


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(a_gateway_step(), min_size=1, max_size=10))
def test_every_gateway_api_change_gives_what_a_build_from_nothing_gives(
    steps: list[tuple[str, Any]],
) -> None:
    pipeline = Pipeline(None, EnvoyPorts())
    objects = _gateway_start()
    pipeline.build(Loaded(list(objects.values())), 1)
    for serial, step in enumerate(steps, start=2):
        objects = _apply(objects, step)
        incremental = pipeline.build(Loaded(list(objects.values())), serial)
        fresh = Pipeline(None, EnvoyPorts()).build(Loaded(list(objects.values())), serial)
        assert_same(incremental, fresh)
        mine, theirs = incremental.model.gateway, fresh.model.gateway
        assert (mine.status if mine else {}) == (theirs.status if theirs else {})
