"""``python -m proxyrunner.demo`` runs the demo MCP server."""

import sys

from proxyrunner.demo.server import main

sys.exit(main())
