"""``python -m drdaemon.synth``: the synthetic DR benchmark generator (see :mod:`drdaemon.evaluate.synth`)."""

from drdaemon.evaluate.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
