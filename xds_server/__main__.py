"""`python -m xds_server`."""

import sys

try:  # a Ctrl-C that lands while the entry point itself is imported: quiet too
    from envoy_lifecycle.entry import xds_server
except KeyboardInterrupt:
    print("xds-server: interrupted", file=sys.stderr)
    sys.exit(130)

xds_server()
