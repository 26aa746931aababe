"""``python -m drdaemon`` is the ``drdaemon`` command."""

import sys

from drdaemon.cli import main

sys.exit(main())
