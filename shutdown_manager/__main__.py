import sys

from shutdown_manager.cli import main

sys.exit(main())
