"""``python -m drdaemon`` is the ``drdaemon`` command."""

import signal
import sys

#: Signals held back until the daemon can honour them (:meth:`drdaemon.service.daemon.Daemon.run`):
#: stop (SIGTERM, SIGINT) and reload the weights (SIGHUP).
HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def entry() -> int:
    """The command, with SIGTERM, SIGINT and SIGHUP blocked from the first instant.

    Loading the modules takes a while (torch: seconds), and a SIGTERM then would kill the
    process with the signal. Blocked, it stays pending until the daemon has its handlers in
    place, then stops it gracefully (exit 0); other verbs unblock at once.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    from drdaemon.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(entry())
