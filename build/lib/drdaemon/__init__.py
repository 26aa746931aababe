"""drdaemon: whole-frame enhancement service for industrial X-ray DR frames."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("drdaemon")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
