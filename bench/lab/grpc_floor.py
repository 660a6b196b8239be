"""The floor under any xDS server in Python: grpc.aio itself, doing no xDS work.

A server sends one prebuilt message to each of N streams and reads one answer from each, per
round; clients (several processes, one connection per stream, as Envoys) answer at once. The
server's CPU per round is what one change costs a server of N proxies before any work of its
own. Run: `python -m bench.lab.grpc_floor [--proxies N]` (bench/scale.py runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psutil
from envoy.service.discovery.v3 import discovery_pb2

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = f"/{SERVICE}/DeltaAggregatedResources"
BODY = discovery_pb2.DeltaDiscoveryResponse(
    system_version_info="0123456789abcdef", type_url="t", nonce="1"
).SerializeToString()
ROUNDS = 10


class Floor:
    def __init__(self) -> None:
        self.round = asyncio.Event()
        self.connected = 0

    async def handler(self, requests: AsyncIterator[Any], _: Any) -> AsyncIterator[bytes]:
        answers: asyncio.Queue[None] = asyncio.Queue()

        async def read() -> None:
            async for _request in requests:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        self.connected += 1
        try:
            await answers.get()  # its first request: connected
            while True:
                current = self.round
                await current.wait()
                yield BODY
                await answers.get()
        finally:
            reader.cancel()

    def next_round(self) -> None:
        current, self.round = self.round, asyncio.Event()
        current.set()


async def serve(proxies: int, workers: int) -> float:
    floor = Floor()
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        floor.handler,
        request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
        response_serializer=lambda body: body,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"DeltaAggregatedResources": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clients = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", __spec__.name if __spec__ else "bench.lab.grpc_floor",
            "--client", str(port), "--proxies", str(proxies // workers),
        )
        for _ in range(workers)
    ]  # fmt: skip
    try:
        while floor.connected < proxies // workers * workers:  # noqa: ASYNC110 - a count
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        me = psutil.Process()
        before = sum(me.cpu_times()[:2])
        for _ in range(ROUNDS):
            floor.next_round()
            await asyncio.sleep(0.5)
        return (sum(me.cpu_times()[:2]) - before) / ROUNDS
    finally:
        for client in clients:
            client.kill()
            await client.wait()
        await server.stop(None)


async def client(port: int, count: int) -> None:
    async def one() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = channel.stream_stream(
            METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )(None)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url="t"))
        async for response in call:
            ack = discovery_pb2.DeltaDiscoveryRequest(type_url="t", response_nonce=response.nonce)
            await call.write(ack)

    await asyncio.gather(*(one() for _ in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=1000, help="streams (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.proxies))
        return
    cpu = asyncio.run(serve(args.proxies, args.workers))
    print(json.dumps({"proxies": args.proxies, "server_cpu_per_round": cpu}))


if __name__ == "__main__":
    main()
