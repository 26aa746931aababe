"""Durable atomic files: a name appears only with its whole content, and stays after a power cut.

Every file the daemon puts under a final name is written under a temporary dot-name in the
same folder, flushed with ``fsync``, linked to its final name (which fails instead of
replacing a file that exists), and the folder itself is flushed so that the new name
survives a crash too. A reader (or a restart) never sees half a file.

Temporary names carry their owner (host, pid, the process's start time, the identity of the
daemon's work folder and a random instance id), because folders may be shared by daemons on
several hosts: a start-up removes only temporaries it can prove abandoned, i.e. written by an
earlier run of the daemon over the same work folder (never a peer's, whatever its host name
or pid). Temporaries are created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``): a file or
symbolic link planted at a temporary's name is never opened, followed or truncated. Names
nobody can predict (the instance id, and a fresh random tag for every temporary that is not
kept as proof) make planting one pointless to begin with.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: Every temporary file the daemon writes ends with this suffix, so that start-up can remove
#: the leftovers of a crash without touching anybody else's files.
TEMP_SUFFIX = ".drdaemon.tmp"
#: Longest name a folder accepts on the filesystems a station uses (NAME_MAX).
NAME_MAX = 255
#: Internal names (temporaries, plans) keep at most this many bytes of the name they derive
#: from, so that the owner and suffixes always fit under :data:`NAME_MAX`.
_KEPT_NAME_BYTES = 120

#: Hex digits of a work folder's identity and of a process's instance id in an owner token.
ID_HEX = 12
#: Attempts at creating a temporary under a fresh random name while planted names are in the way.
_TEMP_TRIES = 16
#: Bytes of the host name kept in an owner token, so that every temporary name fits NAME_MAX.
_HOST_BYTES = 40

_OWNER_RE = re.compile(
    r"\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<start>\d+)"
    rf"(?:-(?P<work>[0-9a-f]{{{ID_HEX}}})(?P<instance>[0-9a-f]{{{ID_HEX}}}))?"
    r"(?P<tag>[A-Za-z0-9_]*)" + re.escape(TEMP_SUFFIX) + "$"
)


@dataclass(frozen=True)
class Owner:
    """Who wrote a temporary file: a host, a pid and that process's start time (clock ticks),
    the identity of the daemon's work folder (empty outside a daemon) and a random id of the
    process (the *instance*), so that two processes never share a token, even on hosts or in
    containers of one name with one pid."""

    host: str
    pid: int
    start: int
    work: str = ""
    instance: str = ""

    @property
    def token(self) -> str:
        base = f"{self.host}-{self.pid}-{self.start}"
        if not self.instance:
            return base
        return f"{base}-{self.work or '0' * ID_HEX}{self.instance}"

    def is_abandoned(self) -> bool:
        """True only when provably gone: this host, and no process with that pid and start time."""
        if self.host != _host():
            return False  # another host's daemon: it may well be running
        return process_start(self.pid) != self.start

    def left_behind_for(self, successor: Owner) -> bool:
        """Whether ``successor`` may remove this owner's temporaries as abandoned.

        A temporary of a work folder's daemon belongs to that work folder: only a later run
        over the same work folder (which holds its lock, so this owner has stopped) removes
        it, never a peer's start-up, whatever the host names and pids. A temporary without a
        work folder (``drdaemon enhance``, or written before work folders had identities) is
        abandoned when its process provably is gone from this host.
        """
        if self.work and self.work != "0" * ID_HEX:
            return self.work == successor.work and self.instance != successor.instance
        return self.is_abandoned()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes as they are on disk (raw frames, weights, checkpoints)."""
    with open(path, "rb", buffering=0) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _host() -> str:
    return (re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host")[:_HOST_BYTES]


def new_id() -> str:
    """A random id of :data:`ID_HEX` hex digits (an instance, a work folder, a temporary's tag)."""
    return secrets.token_hex(ID_HEX // 2)


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


@lru_cache(maxsize=4)
def _owner_of(pid: int) -> Owner:
    return Owner(_host(), pid, process_start(pid) or 0, instance=new_id())


def current_owner(work: str = "") -> Owner:
    """This process as the owner of the temporaries it writes (recomputed after a fork).

    ``work`` is the identity of the work folder of the daemon this process runs, if any.
    """
    owner = _owner_of(os.getpid())
    return Owner(owner.host, owner.pid, owner.start, work, owner.instance) if work else owner


def short_name(name: str) -> str:
    """``name`` itself if short, else a prefix and a hash of it, for names derived from it."""
    raw = os.fsencode(name)
    if len(raw) <= _KEPT_NAME_BYTES and name.isprintable():
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    prefix = raw[:48].decode("utf-8", "ignore")
    prefix = "".join(ch for ch in prefix if ch.isalnum() or ch in "-_~")
    return f"{prefix}#{digest}"


def temp_path_for(final: Path, tag: str = "", owner: Owner | None = None) -> Path:
    """The temporary dot-name next to ``final`` under which its content is written first."""
    final = Path(final)
    who = owner if owner is not None else current_owner()
    return final.with_name(f".{short_name(final.name)}.{who.token}{tag}{TEMP_SUFFIX}")


def temp_owner(name: str) -> Owner | None:
    """The owner named in a temporary file's name, or None when the name carries none."""
    match = _OWNER_RE.search(name)
    if match is None:
        return None
    return Owner(match["host"], int(match["pid"]), int(match["start"]), match["work"] or "", match["instance"] or "")


def _nonce() -> str:
    """The random tag of a temporary that is not kept (a fresh one for every attempt)."""
    return "_" + new_id()


#: Flags of every temporary's creation: a new file only, never through a symbolic link.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_temp(final: Path, data: bytes, owner: Owner | None = None, *, kept: bool = False) -> Path:
    """Create a new temporary for ``final``, write and fsync ``data`` in it; return its name.

    The file is created exclusively and without following links, so whatever lies at the
    name (a planted symbolic link to an archived frame) is never opened. A ``kept``
    temporary has the one name :func:`temp_path_for` gives (it proves the final name ours to
    a restart; ``FileExistsError`` when that name is taken); any other gets a fresh random
    tag, and another one while a name is taken.
    """
    for _ in range(1 if kept else _TEMP_TRIES):
        temp = temp_path_for(final, tag="" if kept else _nonce(), owner=owner)
        try:
            fd = os.open(temp, _CREATE_FLAGS, 0o666)
        except FileExistsError:
            if kept:
                raise
            continue
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_TEMP_TRIES} tries", str(final))


def atomic_write(
    final: Path, data: bytes, *, replace: bool = False, keep_temp: bool = False, owner: Owner | None = None
) -> Path | None:
    """Write ``data`` to ``final`` so that the name appears only with the whole content.

    Without ``replace`` an existing file is never overwritten (``FileExistsError``): outputs
    are immutable once committed. The check and the rename are one step (a hard link), so a
    file that appears between them is not clobbered either, even by another host on a share.
    With ``keep_temp`` the temporary name stays as a second link (returned): it proves to a
    restart that the final name is this process's, until the commit is complete.
    """
    final = Path(final)
    temp = write_temp(final, data, owner, kept=keep_temp)
    try:
        if replace:
            os.replace(temp, final)
            kept = None
        else:
            linked = link_no_replace(temp, final)
            kept = temp if (keep_temp and linked) else None
            if kept is None and linked:
                os.unlink(temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(final.parent)
    return kept


_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK})


def try_link(source: Path, target: Path) -> bool:
    """Hard-link ``source`` (never a symlink's target) as ``target``; False where links are unsupported.

    The link is the exclusive reservation of a name in a shared folder: it fails with
    ``FileExistsError`` when the name exists, atomically, even across hosts.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_LINKS:
            return False
        raise
    return True


def link_no_replace(source: Path, target: Path) -> bool:
    """Give ``source`` the name ``target`` unless it exists; True if linked (``source`` remains).

    Shares without hard links (SMB, FAT) fall back to check-then-rename (False: ``source``
    is gone), which is exclusive only within one process.
    """
    if try_link(source, target):
        return True
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "File exists", str(target))
    os.rename(source, target)
    return False


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


def remove_temporaries(folder: Path, successor: Owner | None = None) -> list[Path]:
    """Delete temporaries (``.*.drdaemon.tmp``) whose owner provably is gone; return those kept.

    ``successor`` is the process cleaning up (by default this one): see
    :meth:`Owner.left_behind_for`. A temporary of a live process, of another host, or of
    another work folder's daemon is left alone: it is in flight, or its own daemon's proof.
    """
    me = successor if successor is not None else current_owner()
    kept: list[Path] = []
    if not folder.is_dir():
        return kept
    removed = False
    for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
        owner = temp_owner(leftover.name)
        if owner is not None and owner.left_behind_for(me):
            leftover.unlink(missing_ok=True)
            removed = True
        else:
            kept.append(leftover)
    if removed:
        fsync_directory(folder)
    return kept


__all__ = [
    "NAME_MAX",
    "TEMP_SUFFIX",
    "Owner",
    "atomic_write",
    "current_owner",
    "fsync_directory",
    "link_no_replace",
    "new_id",
    "process_start",
    "remove_temporaries",
    "short_name",
    "temp_owner",
    "temp_path_for",
    "try_link",
    "write_temp",
]
