"""The trainer's own error: a run that cannot start or continue."""

from __future__ import annotations


class TrainerError(Exception):
    """A run that cannot start or continue; the message says why."""
