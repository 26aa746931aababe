"""Exit statuses of the ``drdaemon`` command, after sysexits, so a service manager can tell them apart.

A lost device and an internal error share status 70 (EX_SOFTWARE: restart me); the log event
(``device_lost`` or ``internal_error``) and the metric ``drdaemon_fatal_errors_total{cause}``
say which it was. The unit file's ``RestartPreventExitStatus`` names :data:`EXIT_CONFIG`.
"""

from __future__ import annotations

EXIT_OK = 0
#: ``drdaemon enhance``: some of the files could not be enhanced.
EXIT_SOME_FAILED = 1
#: The accelerator is gone; the service manager restarts the daemon.
EXIT_DEVICE_LOST = 70
#: An exception nobody anticipated (a bug); restarting is the best a service manager can do.
EXIT_INTERNAL_ERROR = 70
#: Another daemon holds the work folder (EX_TEMPFAIL).
EXIT_BUSY = 75
#: The configuration is invalid (EX_CONFIG); restarting would not help.
EXIT_CONFIG = 78

__all__ = ["EXIT_BUSY", "EXIT_CONFIG", "EXIT_DEVICE_LOST", "EXIT_INTERNAL_ERROR", "EXIT_OK", "EXIT_SOME_FAILED"]
