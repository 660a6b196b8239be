"""Backend-rollout benchmark: failed requests per rollout of the pods behind Envoy, for our
policy and the anchors' (Contour: ready endpoints only, no retries; Envoy Gateway: DRAINING
endpoints, `connect-failure,reset` x10), same run, same clients, same real Envoy 1.40.

Run: `make bench` (or `python bench/backend_rollout.py [--runs N]`). Each row is an app's
SIGTERM behaviour and a rollout (bench/lab/rollout.py: backend pods as real processes on
127.0.0.x, the EndpointSlice lagging SIGTERM by 0 to 1 s, four clients of keep-alive GETs
and POSTs with unique ids, one of long streams, one of WebSocket sessions); each cell the
sums over the runs: failed GETs / failed POSTs / POSTs executed twice / streams cut.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab.rollout import Outcome, from_manifests, through_envoy

POLICIES = {"ours": None, "Contour's": "contour", "Envoy Gateway's": "envoy-gateway"}
ROWS = [
    ("graceful", "surge", "graceful close, rolling update (3 pods)"),
    ("exit", "surge", "exit at once, rolling update (3 pods)"),
    ("graceful", "scale-down", "graceful close, scale down 3 -> 2"),
    ("prestop-sleep", "lone-delete", "2 s preStop sleep, lone pod deleted"),
]


async def cell(policy: str | None, behaviour: str, kind: str, runs: int) -> Counter[str]:
    total: Counter[str] = Counter()
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="rollout-") as tmp:
            server, apply = from_manifests(Path(tmp), policy)
            outcome, _ = await through_envoy(Path(tmp), server, apply, behaviour, kind)
        total.update(_count(outcome))
    return total


def _count(outcome: Outcome) -> Counter[str]:
    return Counter(
        {
            "GET": outcome.failed["GET"],
            "POST": outcome.failed["POST"],
            "twice": len(outcome.executed_twice),
            "cut": outcome.failed["STREAM"],
            "sent": outcome.sent["GET"] + outcome.sent["POST"],
        }
    )


async def main(runs: int) -> None:
    header = "| app, rollout | " + " | ".join(POLICIES) + " |"
    print(f"failed GETs / failed POSTs / POSTs executed twice / streams cut, {runs} run(s) each")
    print()
    print(header)
    print("|" + " --- |" * (len(POLICIES) + 1))
    for behaviour, kind, label in ROWS:
        cells = []
        for policy in POLICIES.values():
            c = await cell(policy, behaviour, kind, runs)
            cells.append(f"{c['GET']} / {c['POST']} / {c['twice']} / {c['cut']} (of {c['sent']})")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rollouts per cell (default 3)")
    asyncio.run(main(parser.parse_args().runs))
