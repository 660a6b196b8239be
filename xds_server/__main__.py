"""`python -m xds_server`."""

from envoy_lifecycle.entry import xds_server

xds_server()
