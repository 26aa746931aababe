"""Whether each folder is still on the filesystem it started on (a share that went away).

When the share an outbox is mounted from goes away (``umount -l``, an automounter that gave
up), the path still names a folder: the empty mount point on the local disk. A daemon that
kept writing there would fill the local disk with frames nobody downstream sees. So at
start the daemon records, for every folder it writes, the *mount root* (the nearest folder
at or above it where the filesystem changes, by ``st_dev``); before every commit it checks
that the mount root is the same folder. A share that is mounted again at the same place
passes again (its device number may differ); the same folder on the local disk does not.

A folder that was a mount point, or lies inside one, is never re-created when it vanishes:
that would create it on whatever filesystem is left underneath.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path


class FolderUnmounted(OSError):
    """A folder is no longer on the filesystem it started on; the output waits until it is."""


def _existing(path: Path) -> tuple[Path, os.stat_result] | None:
    """``path`` or its nearest existing ancestor, with its status (None if nothing exists)."""
    for candidate in (path, *path.parents):
        try:
            return candidate, os.stat(candidate)
        except OSError:
            continue
    return None


def mount_root(path: Path) -> Path | None:
    """The nearest folder at or above ``path`` (or its nearest existing ancestor) where the filesystem changes."""
    found = _existing(Path(os.path.abspath(path)))
    if found is None:
        return None
    current, status = found
    while current != current.parent:
        try:
            above = os.stat(current.parent)
        except OSError:
            return current
        if above.st_dev != status.st_dev:
            return current
        current, status = current.parent, above
    return current


class MountWatch:
    """The mount root each folder had at start; :meth:`check` raises when one changed."""

    def __init__(self, folders: Iterable[tuple[str, Path]]) -> None:
        self.folders = [(name, Path(os.path.realpath(path))) for name, path in folders]
        self._roots: dict[Path, Path | None] = {}

    def record(self) -> None:
        """Note where every folder's filesystem begins (at start-up, after the folders were prepared)."""
        self._roots = {path: mount_root(path) for _, path in self.folders}

    def moved(self) -> list[str]:
        """``folders.<name> (<path>)`` for each folder whose filesystem is not the one it started on."""
        changed = []
        for name, path in self.folders:
            if path in self._roots and mount_root(path) != self._roots[path]:
                changed.append(f"folders.{name} ({path})")
        return changed

    def check(self) -> None:
        """Raise :class:`FolderUnmounted` when a folder's filesystem went away (or another took its place)."""
        changed = self.moved()
        if changed:
            raise FolderUnmounted(
                errno.ENODEV,
                f"{', '.join(changed)} is no longer on the filesystem it started on (was a share unmounted?); "
                "frames wait until it is mounted again",
            )

    def may_recreate(self, folder: Path) -> bool:
        """Whether a vanished ``folder`` may be created again: its parent exists on the folder's own filesystem.

        A folder that was a mount point (its own mount root) is never re-created, nor one whose
        filesystem is gone: either would put it on the local disk underneath.
        """
        path = Path(os.path.realpath(folder))
        root = self._roots.get(path)
        if root is None or root == path:
            return False
        return path.parent.is_dir() and mount_root(path.parent) == root


__all__ = ["FolderUnmounted", "MountWatch", "mount_root"]
