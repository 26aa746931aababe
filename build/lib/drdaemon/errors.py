"""Why a frame failed: a small fixed vocabulary shared by reason files, logs and metrics."""

from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    """Where in a frame's journey the failure happened."""

    READ = "read"
    ENHANCE = "enhance"
    WRITE = "write"


class Reason(str, Enum):
    """Fixed set of failure reasons (a metric label, so it must stay small and stable)."""

    UNREADABLE = "unreadable"  # not an image we can decode at all
    TRUNCATED = "truncated"  # image header is fine but the data ends early
    UNSUPPORTED = "unsupported"  # multi-page, multi-channel, exotic dtype
    TOO_LARGE = "too_large"  # header promises more pixels or bytes than allowed
    EMPTY = "empty"  # zero-byte file or zero-size image
    ENGINE_ERROR = "engine_error"  # the enhancer raised
    DEVICE_ERROR = "device_error"  # CUDA out of memory or driver fault
    WRITE_ERROR = "write_error"  # output could not be written
    CHANGED = "changed"  # the file kept changing after it was claimed (a writer still at work)


class FrameError(Exception):
    """A frame that cannot be processed; carries the stage and reason for the reason file."""

    def __init__(self, stage: Stage, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.reason = reason


class DeviceLost(Exception):
    """The configured accelerator is gone (not one frame's fault): the daemon must exit non-zero
    so the service manager restarts it, and never fall back to the CPU silently."""
