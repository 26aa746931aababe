"""Fault 1: daemons on two hosts sharing the inbox and outbox lose nothing and double nothing."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from drdaemon.config import Folders
from drdaemon.engines import ClassicalEngine
from drdaemon.folders.claim import WorkItem, claim
from drdaemon.folders.commit import Finisher
from drdaemon.io.durable import Owner, current_owner, temp_path_for
from drdaemon.io.limits import ReadLimits
from drdaemon.service.frame import commit_frame, enhance_frame, load_frame
from tests.reliability.plant import Plant, dead_owner, ledger
from tests.testkit import frame_bytes, sha

pytestmark = pytest.mark.reliability


def two_hosts(tmp_path: Path) -> tuple[Folders, Folders]:
    shared = Folders().resolved(tmp_path)
    a, b = (
        shared.model_copy(update={"work": tmp_path / "work-a"}),
        shared.model_copy(update={"work": tmp_path / "work-b"}),
    )
    for folders in (a, b):
        for _, path in folders:
            path.mkdir(exist_ok=True)
    return a, b


def process(item: WorkItem, finisher: Finisher) -> None:
    commit_frame(enhance_frame(load_frame(item, ReadLimits()), ClassicalEngine()), finisher)


def test_a_killed_daemon_never_takes_another_daemons_sidecar_for_its_own(tmp_path: Path) -> None:
    a, b = two_hosts(tmp_path)
    mine, theirs = frame_bytes(1), frame_bytes(2)
    (a.inbox / "s.tif").write_bytes(mine)
    frozen = claim(a.inbox / "s.tif", a.work, time.time(), time.monotonic())
    assert frozen is not None
    plan = Finisher.for_folders(a, preview=False, owner=dead_owner()).plan_success(frozen.path, "s.tif")
    assert (
        plan.output is not None and Path(plan.output).name == "s.tif"
    )  # planned, then frozen and killed before writing
    (b.inbox / "s.tif").write_bytes(theirs)
    other = claim(b.inbox / "s.tif", b.work, time.time(), time.monotonic())
    assert other is not None
    process(other, Finisher.for_folders(b, preview=False))
    assert (b.outbox / "s.tif.json").exists()  # the other host committed its own frame under the name

    restarted = Finisher.for_folders(a, preview=False)
    redo = restarted.recover(a.work)
    assert [p.name for p in redo] == ["s.tif"]  # the sidecar at the planned name does not vouch for it
    process(WorkItem(path=redo[0], original=a.inbox / "s.tif"), restarted)
    result = ledger({"outbox": a.outbox, "archive": a.archive, "failed": a.failed}, [a.work, b.work], [mine, theirs])
    result.assert_exact()
    assert result.outputs == 2 and sorted(p.name for p in a.outbox.iterdir()) == [
        "s.tif",
        "s.tif.json",
        "s~1.tif",
        "s~1.tif.json",
    ]
    assert sorted(p.name for p in a.archive.iterdir()) == ["s.tif", "s~1.tif"]


def test_start_up_removes_only_temporaries_whose_owner_is_gone(tmp_path: Path) -> None:
    a, _ = two_hosts(tmp_path)
    other_host = Owner("plc_host_2", 4242, 77)
    alive = current_owner()  # a daemon still running on this host
    in_flight = [temp_path_for(a.outbox / "x.tif", owner=o) for o in (other_host, alive)]
    abandoned = temp_path_for(a.outbox / "y.tif", owner=dead_owner())
    for path in (*in_flight, abandoned):
        path.write_bytes(b"half a frame")
    Finisher.for_folders(a, preview=False, owner=dead_owner()).recover(a.work)
    assert all(p.exists() for p in in_flight) and not abandoned.exists()


def test_two_daemons_same_stem_frames_and_kills_of_either(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    daemons = [plant.daemon("a"), plant.daemon("b")]
    for daemon in daemons:
        daemon.start()
    rng = random.Random(13)
    inputs: list[bytes] = []
    kills = 0
    try:
        for daemon in daemons:
            daemon.wait_ready()
        for index in range(60):
            data = frame_bytes(index)
            inputs.append(data)
            # The same stem every time, as a station that names every shot after its part number.
            plant.wait_for(lambda: not (plant.dirs["inbox"] / "s.tif").exists(), 60)
            plant.drop("s.tif", data)
            if index % 12 == 5:
                victim = rng.choice(daemons)
                time.sleep(rng.uniform(0.0, 0.6))
                victim.kill()
                kills += 1
                victim.start()
        plant.wait_for(lambda: plant.records() == len(inputs), 120)
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        plant.stop_all()
    result = ledger(plant.dirs, [d.work for d in daemons], inputs)
    result.save("two_daemons_same_stem")
    result.assert_exact()
    assert kills == 5 and result.outputs == 60
    assert len({sha(d) for d in inputs}) == 60
