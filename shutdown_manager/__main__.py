"""`python -m shutdown_manager`."""

from envoy_lifecycle.entry import shutdown_manager

shutdown_manager()
