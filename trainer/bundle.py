"""``python -m trainer.bundle``: putting trained weights into the package (the work is in :mod:`trainer.radiograph.bundle`)."""

from trainer.radiograph.bundle import main

if __name__ == "__main__":
    raise SystemExit(main())
