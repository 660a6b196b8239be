import sys

from xds_server.cli import main

sys.exit(main())
