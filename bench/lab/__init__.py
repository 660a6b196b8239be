"""The lab: real Envoy processes, backends, clients, the xDS server and a kubelet-faithful pod
runner. `make demo`, the benchmarks and the tests all run on it; it imports nothing from the
test tree (the tests import it, never the other way round)."""
