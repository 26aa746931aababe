from drdaemon.evaluate.cli import main

raise SystemExit(main())
