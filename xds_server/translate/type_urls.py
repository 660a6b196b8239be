"""The type URLs of the resources we translate to, and the one that is not a type on the wire."""

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
VHOST = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
ROUTE_VHDS = "vhds:" + ROUTE
"""Not a type on the wire: the route configurations delta streams get (their virtual hosts
come over VHDS, one resource each), kept apart from the full ones state-of-the-world
streams get under ROUTE. The snapshot assembles those from the virtual hosts' bytes."""
