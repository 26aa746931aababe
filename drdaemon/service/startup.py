"""The start-up checks that ``drdaemon run`` and ``drdaemon check-config`` share.

``check-config`` is the gate an engineer runs before a restart, and the unit does not restart
a daemon that exits 78: so it must refuse what ``run`` would refuse, in the same words. Both
call these functions. Only what needs the work lock or the inbox contents (the lock itself,
crash recovery) is left to ``run``.
"""

from __future__ import annotations

import difflib
import errno
import fcntl
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from drdaemon.config import ConfigError, Folders, MetricsConfig, Settings
from drdaemon.engines import Engine, build_checked_engines
from drdaemon.folders.claim import LOCK_NAME
from drdaemon.io.durable import current_owner
from drdaemon.service.prometheus import DaemonMetrics

log = structlog.get_logger(__name__)


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _not_writable(name: str, folder: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"folders.{name}: {folder} is not writable by {_user()} ({exc.strerror}); the daemon's "
        "user must own the folder or be in its group with write access"
    )


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def closest_folder(path: Path) -> Path | None:
    """The existing folder whose name is closest to the missing ``path``'s (a typo's likely target).

    The first missing part of ``path`` is compared with the folders beside it; when the rest
    of ``path`` exists under the closest one, that is named, else the closest one itself.
    """
    ancestor = nearest_existing(path.parent)
    missing = path.relative_to(ancestor).parts
    try:
        siblings = sorted(entry.name for entry in os.scandir(ancestor) if entry.is_dir())
    except OSError:
        return None
    matches = difflib.get_close_matches(missing[0], siblings, n=1, cutoff=0.6)
    if not matches:
        return None
    closest = ancestor / matches[0]
    whole = closest.joinpath(*missing[1:])
    return whole if whole.is_dir() else closest


def _from_environment(key: str) -> str:
    variable = f"DRDAEMON_FOLDERS__{key.upper()}"
    return f" (from {variable})" if any(name.upper() == variable for name in os.environ) else ""


def missing_inbox_error(inbox: Path) -> ConfigError:
    """A missing inbox under ``folders.create = false``: name the closest folder and the fixes."""
    closest = closest_folder(inbox)
    hint = f" (did you mean {closest}?)" if closest is not None else ""
    return ConfigError(
        f"folders.inbox{_from_environment('inbox')}: {inbox} does not exist{hint}. The daemon would watch an "
        "empty folder while the station writes elsewhere. Fix folders.inbox, create the folder, or set "
        "folders.create = true (DRDAEMON_FOLDERS__CREATE=true) to let the daemon create missing folders"
    )


def folders_to_create(folders: Folders) -> list[tuple[str, Path]]:
    """The configured folders that do not exist yet, as (key, path)."""
    return [(name, path) for name, path in folders if not path.is_dir()]


def prepare_folders(folders: Folders, dry_run: bool = False) -> list[str]:
    """Create missing folders; refuse folders the daemon cannot write or that cannot share atomic renames.

    A missing inbox is an error naming the closest existing folder unless ``folders.create``
    is set. Each folder created is named in a ``folder_created`` log line. With ``dry_run``
    (``check-config``) nothing is created: what would be is returned and checked as far as it
    can be (the nearest existing parent must be writable). Returns one line per folder
    created (or that would be).
    """
    missing = folders_to_create(folders)
    if not folders.create and any(name == "inbox" for name, _ in missing):
        raise missing_inbox_error(folders.inbox)
    created: list[str] = []
    for name, path in missing:
        if dry_run:
            parent = nearest_existing(path)
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"folders.{name}: cannot create {path}: {parent} is not a writable folder")
            created.append(f"folders.{name}: {path} would be created at start")
            continue
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"folders.{name}: cannot create {path}: {exc}") from exc
        log.info("folder_created", folder=name, path=str(path))
        created.append(f"folders.{name}: created {path}")
    devices = {name: os.stat(nearest_existing(path)).st_dev for name, path in folders if name != "outbox"}
    if len(set(devices.values())) > 1:
        raise ConfigError(
            "folders.inbox, folders.work, folders.archive and folders.failed must be on one "
            f"filesystem (frames move between them by rename); found devices {devices}"
        )
    if not folders.work.is_dir():
        return created  # a dry run: the rename probes need the work folder
    for name in ("inbox", "archive", "failed"):
        other = getattr(folders, name)
        if other.is_dir():
            probe_rename(folders.work, other, name)
    if folders.outbox.is_dir():
        probe_writable(folders.outbox, "outbox")
    return created


def probe_rename(work: Path, other: Path, name: str) -> None:
    """Prove that a file renames between ``work`` and ``other`` and back; a ConfigError if not.

    Equal device numbers are not enough: two bind mounts of one filesystem share a device
    number, yet the kernel refuses a rename between them (EXDEV) — at the first frame.
    """
    probe = work / f".drdaemon-probe.{current_owner().token}"
    moved = other / probe.name
    try:
        probe.write_bytes(b"")
    except PermissionError as exc:
        raise _not_writable("work", work, exc) from exc
    try:
        os.rename(probe, moved)
        os.rename(moved, probe)
    except PermissionError as exc:
        raise _not_writable(name, other, exc) from exc
    except OSError as exc:
        raise ConfigError(
            f"folders.work ({work}) and folders.{name} ({other}) must be one filesystem mount: a rename "
            f"between them fails ({exc.strerror}); a bind mount counts as another mount"
        ) from exc
    finally:
        probe.unlink(missing_ok=True)
        moved.unlink(missing_ok=True)


def probe_writable(folder: Path, name: str) -> None:
    """Refuse a folder the daemon's user may not write into (a wrong owner or mode).

    Only a permission error is a configuration error: a full or read-only share is a fault
    of the moment, which the running daemon waits out (:mod:`drdaemon.service.output`).
    """
    probe = folder / f".drdaemon-probe.{current_owner().token}"
    try:
        probe.write_bytes(b"")
    except PermissionError as exc:
        raise _not_writable(name, folder, exc) from exc
    except OSError:
        return
    finally:
        probe.unlink(missing_ok=True)


def load_engines(settings: Settings) -> list[Engine]:
    """The configured engines, built on their devices (weights read and checked); a ConfigError if none."""
    engines = build_checked_engines(settings.engine)
    if not engines:
        raise ConfigError("engine: the configuration yields no engine to run")
    return engines


def serve_metrics(metrics: DaemonMetrics, config: MetricsConfig) -> int:
    """Serve ``/metrics`` on the configured address and port; the bound port, or a ConfigError."""
    try:
        return metrics.serve(config.address, config.port)
    except OSError as exc:
        raise ConfigError(f"metrics.port: cannot serve metrics on {config.address}:{config.port}: {exc}") from exc


def check_metrics_port(config: MetricsConfig, work: Path) -> str:
    """Bind the metrics port as ``run`` would, and let it go; what was found, or a ConfigError.

    A port held by the daemon that runs on this very work folder is fine: it is released at
    the restart that the check is for.
    """
    if not config.enabled:
        return "metrics: disabled"
    metrics = DaemonMetrics()
    try:
        port = serve_metrics(metrics, config)
    except ConfigError as error:
        cause = error.__cause__
        in_use = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
        holder = lock_holder(work) if in_use else None
        if holder is not None and holds_listening_socket(holder, config.port):
            return f"metrics: port {config.port} is held by the daemon running on this work folder (pid {holder})"
        raise
    finally:
        metrics.close()
    return f"metrics: {config.address}:{port} can be bound"


def lock_holder(work: Path) -> int | None:
    """The pid of the daemon holding ``work``'s lock, or None when nobody holds it."""
    path = Path(work) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(os.read(fd, 32).split()[0])
        except (ValueError, IndexError):
            return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def holds_listening_socket(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port`` (Linux /proc)."""
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                return True
        except OSError:
            continue
    return False


@dataclass
class StartUpCheck:
    """What :func:`check_start_up` found: a line per check passed, and the engines it built."""

    passed: list[str] = field(default_factory=list)
    engines: list[Engine] = field(default_factory=list)


def check_start_up(settings: Settings, dry_run: bool = False) -> StartUpCheck:
    """Every start-up check of ``run`` that needs neither the work lock nor the inbox contents.

    With ``dry_run`` (``check-config``) nothing is created on disk: a missing folder that
    ``run`` would create is reported as such. Raises one ConfigError naming every check that
    failed, each in the words ``run`` uses.
    """
    found = StartUpCheck()
    failures: list[str] = []
    try:
        created = prepare_folders(settings.folders, dry_run=dry_run)
        found.passed += created
        found.passed.append(
            "folders: exist, writable, one filesystem for inbox, work, archive and failed"
            if not created
            else "folders: writable, one filesystem for inbox, work, archive and failed (as far as they exist)"
        )
    except ConfigError as error:
        failures.append(str(error))
    try:
        found.engines = load_engines(settings)
        devices = ", ".join(sorted({e.device for e in found.engines}))
        found.passed.append(f"engine: {found.engines[0].name} built on {devices}")
    except ConfigError as error:
        failures.append(str(error))
    try:
        found.passed.append(check_metrics_port(settings.metrics, settings.folders.work))
    except ConfigError as error:
        failures.append(str(error))
    if failures:
        raise ConfigError("\n".join(failures))
    return found


__all__ = [
    "StartUpCheck",
    "check_metrics_port",
    "check_start_up",
    "closest_folder",
    "folders_to_create",
    "load_engines",
    "prepare_folders",
    "probe_rename",
    "probe_writable",
    "serve_metrics",
]
