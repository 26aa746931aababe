"""A plant for the reliability suite: daemon processes on shared folders, and the ledger of what came out.

Every daemon of a plant shares the inbox, outbox, archive and failed folders (as hosts on one
network share would) and has a work folder of its own. :func:`ledger` counts what the
folders hold against what went in: one output and sidecar or one failure record per input,
nothing lost, nothing doubled, nothing partial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from drdaemon.io.durable import TEMP_SUFFIX, Owner, current_owner
from drdaemon.io.sidecar import Sidecar
from tests.testkit import STATION_WATCH, sha, write_config

SHARED = ("inbox", "outbox", "archive", "failed")
#: Where each test's ledger is written, so the README table can quote the last run's counts.
LEDGER_DIR = Path(os.environ.get("DRDAEMON_LEDGER_DIR", "/tmp/drdaemon-reliability"))


def dead_owner() -> Owner:
    """The owner token of a process that no longer runs on this host (a daemon killed with -9)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return Owner(current_owner().host, child.pid, 1)


class Daemon:
    """One ``drdaemon run`` process of a plant, with its own work folder and log."""

    def __init__(self, plant: Plant, name: str, extra: str, watch: str = "") -> None:
        self.plant = plant
        self.name = name
        self.work = plant.root / f"work-{name}"
        self.log = plant.root / f"daemon-{name}.log"
        self.config = plant.root / f"drdaemon-{name}.toml"
        folders = "".join(f'{n} = "{plant.dirs[n]}"\n' for n in SHARED) + f'work = "{self.work}"\n'
        write_config(
            self.config, folders="create = true\n" + folders, engine="", watch=STATION_WATCH + watch, extra=extra
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "drdaemon", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.plant.root,
                env=env,
                start_new_session=True,  # no controlling terminal, as under systemd: SIGHUP reloads
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=timeout)
        self.process = None
        return status

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=30)
        self.process = None

    def events(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        if not self.log.exists():
            return out
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.plant.wait_for(lambda: any(e.get("event") == "daemon_ready" for e in self.events()), timeout)


class Plant:
    """Shared folders and the daemons running on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs = {name: root / name for name in SHARED}
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        self.daemons: list[Daemon] = []

    def daemon(self, name: str, extra: str = "", watch: str = "") -> Daemon:
        """A daemon on the plant's folders; ``extra`` adds tables, ``watch`` keys of ``[watch]``."""
        daemon = Daemon(self, name, extra, watch)
        self.daemons.append(daemon)
        return daemon

    def drop(self, name: str, data: bytes) -> None:
        """Write a frame the way a careful station does: a temporary name, then a rename."""
        temp = self.dirs["inbox"] / f".{sha(os.fsencode(name))[:16]}.part"  # any name may be 255 bytes long
        temp.write_bytes(data)
        os.rename(temp, self.dirs["inbox"] / name)

    def names(self, folder: str) -> list[str]:
        return sorted(p.name for p in self.dirs[folder].iterdir())

    def logs(self) -> str:
        return "\n".join(
            f"--- {d.name}\n{d.log.read_text(errors='replace')[-6000:]}" for d in self.daemons if d.log.exists()
        )

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; folders: { {f: self.names(f)[:40] for f in SHARED} }\n{self.logs()}")

    def records(self) -> int:
        """Sidecars plus failure records: the frames finished one way or the other."""
        return sum(1 for _ in self.dirs["outbox"].glob("*.json")) + sum(
            1 for _ in self.dirs["failed"].glob("*.reason.json")
        )

    def stop_all(self) -> None:
        for daemon in self.daemons:
            if daemon.running():
                daemon.kill()


@dataclass
class Ledger:
    """What came out of a run, per input frame (the README table quotes these counts)."""

    frames_in: int
    outputs: int
    failure_records: int
    lost: int
    doubled: int
    partial: int

    def save(self, test: str) -> None:
        LEDGER_DIR.mkdir(parents=True, exist_ok=True)
        (LEDGER_DIR / f"{test}.json").write_text(json.dumps(asdict(self)))

    def assert_exact(self) -> None:
        assert (self.lost, self.doubled, self.partial) == (0, 0, 0), self


def ledger(dirs: dict[str, Path], works: list[Path], inputs: list[bytes]) -> Ledger:
    """Count outputs, failure records, and inputs lost, doubled or partly committed.

    ``inputs`` are the raw bytes of every frame dropped (duplicates allowed: two identical
    frames must give two results). Refused links count as failure records under their name.
    """
    wanted = Counter(sha(data) for data in inputs)
    ok: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    partial = 0
    for path in dirs["outbox"].glob("*.json"):
        record = Sidecar.model_validate_json(path.read_bytes())
        output = Path(record.output.path)
        archived = Path(record.input.path)
        whole = (
            output == path.with_name(path.name[: -len(".json")])
            and output.exists()
            and sha(output.read_bytes()) == record.output.sha256
            and archived.exists()
            and sha(archived.read_bytes()) == record.input.sha256
        )
        partial += not whole
        ok[record.input.sha256] += 1
    for path in dirs["failed"].glob("*.reason.json"):
        raw = path.with_name(path.name[: -len(".reason.json")])
        if not os.path.lexists(raw):
            partial += 1
            continue
        failed[sha(raw.read_bytes()) if raw.is_file() and not raw.is_symlink() else f"link:{raw.name}"] += 1
    # An output without a sidecar, or a temporary or plan of a daemon that is not running.
    sidecar_less = [
        p
        for p in dirs["outbox"].iterdir()
        if not p.name.startswith(".")
        and not p.name.endswith(".json")
        and not p.name.endswith(".preview.png")
        and not p.with_name(p.name + ".json").exists()
    ]
    leftovers = [
        p for folder in (dirs["outbox"], dirs["archive"], dirs["failed"]) for p in folder.glob(f".*{TEMP_SUFFIX}")
    ]
    in_work = [p for w in works if w.exists() for p in w.iterdir() if p.name != ".drdaemon.lock"]
    archived_shas = Counter(sha(p.read_bytes()) for p in dirs["archive"].iterdir() if not p.name.startswith("."))
    partial += len(sidecar_less) + len(leftovers) + len(in_work)
    partial += sum(abs(archived_shas[h] - ok[h]) for h in set(archived_shas) | set(ok))
    got = ok + failed
    lost = sum(max(0, n - got[h]) for h, n in wanted.items())
    doubled = sum(max(0, got[h] - n) for h, n in wanted.items()) + sum(
        n for h, n in got.items() if h not in wanted and not h.startswith("link:")
    )
    return Ledger(len(inputs), sum(ok.values()), sum(failed.values()), lost, doubled, partial)
