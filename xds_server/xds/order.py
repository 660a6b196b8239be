"""The order a stream pushes types in: make before break.

A resource refers to others by name (a listener to its route configuration, a route to its
clusters, a cluster to its endpoints); Envoy rejects or warms a reference it cannot resolve
yet, so what is referred to goes first. Streams also hold a route back until the clusters it
uses, and their endpoints, are ACKed (`Stream.ready_for`).
"""

from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, VHOST

PUSH_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE, VHOST)
"""Make before break: what a resource refers to is sent before the resource."""
