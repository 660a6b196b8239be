"""Fakes, named as such: an admin server for faults a real Envoy cannot produce, a stand-in
Kubernetes API server; and the CLI runner the tests share."""
