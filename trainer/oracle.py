"""``python -m trainer.oracle``: the reachability oracle (the work is in :mod:`trainer.radiograph.oracle`)."""

from trainer.radiograph.oracle import main

if __name__ == "__main__":
    raise SystemExit(main())
