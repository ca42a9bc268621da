"""``python -m proxyrunner`` is the ``proxyrunner`` command."""

import sys

from proxyrunner.cli import main

sys.exit(main())
