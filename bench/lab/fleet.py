"""One process of a synthetic fleet: `count` ADS clients against one server, driven over
stdin/stdout by bench/scale.py (one JSON object per line each way).

Several of these share the fleet out so the clients' own Python is not one core's worth; each
reports its own CPU so the bench can say what the clients cost beside the server.

Commands (stdin): `{"do": "synced", "timeout": s}` -> `{"synced": [monotonic...], "missing": n}`
once every client has routes; `{"do": "mark"}` -> `{"marked": n}` remembers each client's
routes version; `{"do": "changed", "timeout": s}` -> `{"arrivals": [...], "missing": n}` once
every client's routes differ from the mark; `{"do": "cpu"}` -> `{"cpu": seconds}`;
`{"do": "versions"}` -> the distinct routes versions the clients hold;
`{"do": "quit"}`. Times are `time.monotonic()`: one clock for every process of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from typing import Any

import psutil

from bench.lab.ads_client import SotwProxy, SyntheticProxy

Proxy = SyntheticProxy | SotwProxy


async def _until_all(proxies: list[Proxy], done: Any, timeout: float) -> list[Proxy]:
    """Wait until `done(proxy)` holds for all, or the timeout: return those it does not."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in proxies if not done(p)]
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.005)


def _moved(marks: dict[int, str], proxy: Proxy) -> bool:
    return proxy.routes_version not in ("", marks[id(proxy)])


def _first_arrival(proxy: Proxy, after: str | None) -> float | None:
    for when, version in proxy.arrivals:
        if version and (after is None or version != after):
            return when
    return None


async def serve(args: argparse.Namespace) -> None:
    proxies: list[Proxy] = []
    for n in range(args.count):
        node = f"{args.prefix}-{n}"
        if args.flavour == "sotw":
            proxies.append(SotwProxy(args.address, node))
        else:
            addresses = args.addresses.split(",") if args.addresses else [args.address]
            first = addresses[n % len(addresses)]
            addresses = addresses[n % len(addresses) :] + addresses[: n % len(addresses)]
            proxies.append(
                SyntheticProxy(
                    first, node, digest=False, reconnect=args.reconnect, addresses=addresses
                )
            )
    await asyncio.gather(*(p.start() for p in proxies))
    marks: dict[int, str] = {}
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    me = psutil.Process()
    while line := await reader.readline():
        command = json.loads(line)
        do, timeout = command["do"], float(command.get("timeout", 60))
        if do == "synced":
            missing = await _until_all(proxies, lambda p: p.routes_version, timeout)
            times = [_first_arrival(p, None) for p in proxies]
            answer: dict[str, Any] = {
                "synced": [t for t in times if t is not None],
                "missing": len(missing),
                "retries": sum(getattr(p, "reconnects", 0) for p in proxies),
            }
        elif do == "mark":
            marks = {id(p): p.routes_version for p in proxies}
            for proxy in proxies:
                proxy.arrivals.clear()
            answer = {"marked": len(marks)}
        elif do == "changed":
            missing = await _until_all(proxies, functools.partial(_moved, marks), timeout)
            found = [_first_arrival(p, marks[id(p)]) for p in proxies]
            answer = {"arrivals": [t for t in found if t is not None], "missing": len(missing)}
        elif do == "versions":
            answer = {"versions": sorted({p.routes_version for p in proxies})}
        elif do == "cpu":
            answer = {"cpu": sum(me.cpu_times()[:2])}
        else:
            break
        print(json.dumps(answer), flush=True)
    await asyncio.gather(*(p.stop() for p in proxies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the server's host:port")
    parser.add_argument("--count", type=int, required=True, help="clients in this process")
    parser.add_argument("--flavour", choices=("delta", "sotw"), default="delta")
    parser.add_argument("--prefix", default="fleet", help="node ids: PREFIX-N")
    parser.add_argument(
        "--addresses", default="", help="host:port,... clients start on each in turn (delta)"
    )
    parser.add_argument(
        "--reconnect", action="store_true", help="reconnect when a stream ends (delta)"
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
