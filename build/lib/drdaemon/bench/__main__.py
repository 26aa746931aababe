"""``python -m drdaemon.bench`` is ``drdaemon bench``."""

from drdaemon.bench.cli import main

raise SystemExit(main())
