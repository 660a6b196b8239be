"""Every app deploy behind Envoy, with real processes: backend pods (bench/lab/rollout_app.py
on 127.0.0.x) rolled out as a Deployment does, their EndpointSlice lagging SIGTERM by 0 to
1 s, under keep-alive GETs, POSTs with unique ids, long streams and WebSocket sessions through
a real Envoy fed by
`xds-server serve` (from manifests, and from the FAKE API server in `--kubernetes` mode).

What must hold, whatever the app does on SIGTERM:
* apps that keep serving a moment after SIGTERM (ignore it until SIGKILL, fail readiness
  first, a preStop sleep) and graceful apps whose preStop waits on xds-server's
  `/drained`: no request fails, of any method, no stream or WebSocket session is cut
  (the latter end theirs with 1001 once let go: what they do at SIGTERM);
* apps that stop at SIGTERM (graceful close, exit at once): no GET or other safe request
  fails (a request that never reached the app is retried on another pod, a reset safe
  request too); a POST fails only as the race no retry may fix (DESIGN.md §8: the app
  closed or dropped the connection Envoy had just written it on, Envoy's 503 says
  "connection termination"), never by a refused connection, a missing endpoint, a
  draining pod picked or a retry budget spent; a graceful app finishes its streams and
  ends its WebSocket sessions itself (1001), one that exits cuts what it had;
* no WebSocket handshake fails, ever; no POST id is ever executed twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lab.rollout import (
    BEHAVIOURS,
    ROLLOUTS,
    Outcome,
    app_objects,
    from_manifests,
    through_envoy,
)
from bench.lab.xds import XdsServer
from tests.harness.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(120)

KEEPS_SERVING = ("ignore", "unready", "prestop-sleep", "prestop-drained")
THE_RACE = (
    "POST 503 upstream connect error or disconnect/reset before headers."
    " reset reason: connection termination"
)


async def roll(
    tmp_path: Path, behaviour: str, kind: str, kubernetes: bool = False
) -> tuple[Outcome, dict[str, float]]:
    """The rollout's outcome and the xds-server's metrics after it."""
    if not kubernetes:
        server, apply = from_manifests(tmp_path)
        outcome, metrics = await through_envoy(tmp_path, server, apply, behaviour, kind)
        return outcome, samples(metrics)
    api = await FakeKubeApi().start()
    try:
        for obj in app_objects():
            api.apply(obj)
        server = XdsServer(tmp_path, None, "--kubeconfig", str(api.kubeconfig(tmp_path)))
        outcome, metrics = await through_envoy(tmp_path, server, api.apply, behaviour, kind)
        return outcome, samples(metrics)
    finally:
        await api.stop()


def check(outcome: Outcome, behaviour: str) -> None:
    print(behaviour, outcome.line())
    assert outcome.sent["POST"] > 50, outcome.line()
    assert outcome.sent["STREAM"] > 0, outcome.line()
    assert outcome.sent["WS"] > 0, outcome.line()
    assert not outcome.executed_twice, outcome.line()
    assert outcome.failed["GET"] == 0, outcome.line()
    assert outcome.failed["WS"] == 0, outcome.line()
    if behaviour in KEEPS_SERVING:
        assert not outcome.failed, outcome.line()
        # A graceful app ends its WebSocket sessions itself once /drained let it go.
        ended = {"WS ended by the app: 1001"} if behaviour == "prestop-drained" else set()
        assert set(outcome.errors) <= ended, outcome.line()
        return
    allowed = {THE_RACE, "WS ended by the app: 1001"}
    if behaviour == "exit":  # what it had when it died: cut mid-response, mid-session
        allowed |= {"STREAM cut: RemoteProtocolError", "STREAM cut short"}
        allowed |= {"WS ended by the app: 1006"}
    assert set(outcome.errors) <= allowed, outcome.line()


def samples(text: str) -> dict[str, float]:
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


MATRIX = [
    (behaviour, kind)
    for behaviour in BEHAVIOURS
    for kind in (ROLLOUTS if behaviour not in KEEPS_SERVING else ("surge", "delete"))
]
"""Every rollout for the apps that stop at SIGTERM (where the races are); two for the apps
that keep serving (with them, the rollouts differ only in which pods go)."""


@pytest.mark.parametrize(("behaviour", "kind"), MATRIX)
async def test_a_rollout_fails_no_request_the_app_did_not_lose(
    tmp_path: Path, behaviour: str, kind: str
) -> None:
    outcome, metrics = await roll(tmp_path, behaviour, kind)
    check(outcome, behaviour)
    assert metrics["xds_endpoint_programming_seconds_count"] >= 1


@pytest.mark.parametrize("behaviour", ["graceful", "exit", "prestop-sleep"])
async def test_the_same_from_the_kubernetes_api(tmp_path: Path, behaviour: str) -> None:
    outcome, metrics = await roll(tmp_path, behaviour, "surge", kubernetes=True)
    check(outcome, behaviour)
    assert metrics["xds_endpoint_programming_seconds_count"] >= 1


@pytest.mark.parametrize("behaviour", ["ignore", "prestop-drained"])
async def test_a_lone_pod_being_replaced_serves_until_its_successor_is_ready(
    tmp_path: Path, behaviour: str
) -> None:
    """KEP-1669: no ready endpoint left, the terminating one that still serves is used (an
    app that keeps serving, or one held by /drained until its successor is ready; a blind
    preStop sleep would hold it for a time, not until then)."""
    outcome, metrics = await roll(tmp_path, behaviour, "lone-delete")
    check(outcome, behaviour)
    assert metrics["xds_endpoint_fallback_activations_total"] >= 1


@pytest.mark.parametrize("behaviour", ["graceful", "exit"])
async def test_an_h2c_backend_rolls_out_the_same(tmp_path: Path, behaviour: str) -> None:
    """Envoy speaks HTTP/2 to the pods (appProtocol kubernetes.io/h2c; hypercorn, whose
    graceful shutdown sends GOAWAY): streams refused by it are retried for every method."""
    server, apply = from_manifests(tmp_path, h2c=True)
    outcome, metrics = await through_envoy(tmp_path, server, apply, behaviour, "surge", h2c=True)
    print(behaviour, outcome.line())
    assert outcome.sent["POST"] > 50, outcome.line()
    assert not outcome.executed_twice, outcome.line()
    assert outcome.failed["GET"] == 0, outcome.line()
    if behaviour == "graceful":
        assert not outcome.failed, outcome.line()
    assert samples(metrics)["xds_endpoint_programming_seconds_count"] >= 1
