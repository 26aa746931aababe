"""Durable atomic files: a name appears only with its whole content, and stays after a power cut.

Every file the daemon puts under a final name is written under a temporary dot-name in the
same folder, flushed with ``fsync``, linked to its final name (which fails instead of
replacing a file that exists), and the folder itself is flushed so that the new name
survives a crash too. A reader (or a restart) never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Every temporary file the daemon writes ends with this suffix, so that start-up can remove
#: the leftovers of a crash without touching anybody else's files.
TEMP_SUFFIX = ".drdaemon.tmp"


def temp_path_for(final: Path, tag: str = "") -> Path:
    """The temporary dot-name next to ``final`` under which its content is written first."""
    return final.with_name(f".{final.name}.{os.getpid()}{tag}{TEMP_SUFFIX}")


def atomic_write(final: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` to ``final`` so that the name appears only with the whole content.

    Without ``replace`` an existing file is never overwritten (``FileExistsError``): outputs
    are immutable once committed. The check and the rename are one step (a hard link), so a
    file that appears between them is not clobbered either.
    """
    final = Path(final)
    temp = temp_path_for(final)
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(temp, final)
        else:
            _rename_no_replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(final.parent)


def _rename_no_replace(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # fails with FileExistsError instead of replacing
    except FileExistsError:
        raise
    except OSError:
        # Shares without hard links (SMB, FAT): the daemon is the only writer of its
        # folders (the work-folder lock), so checking first is enough there.
        if target.exists():
            raise FileExistsError(target) from None
        os.rename(source, target)
        return
    os.unlink(source)


def fsync_directory(directory: Path) -> None:
    """Make the renames inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temporaries(folder: Path) -> None:
    """Delete this program's temporary files (``.*.drdaemon.tmp``) left by a crash."""
    if not folder.is_dir():
        return
    for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)


__all__ = ["TEMP_SUFFIX", "atomic_write", "fsync_directory", "remove_temporaries", "temp_path_for"]
