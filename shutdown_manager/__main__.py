"""`python -m shutdown_manager`."""

import sys

try:  # a Ctrl-C that lands while the entry point itself is imported: quiet too
    from envoy_lifecycle.entry import shutdown_manager
except KeyboardInterrupt:
    print("shutdown-manager: interrupted", file=sys.stderr)
    sys.exit(130)

shutdown_manager()
