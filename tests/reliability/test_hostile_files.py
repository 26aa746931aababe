"""Faults 3 to 6: what lies in the inbox is never trusted: links, FIFOs, long and undecodable names."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from drdaemon.io.sidecar import Sidecar
from tests.reliability.plant import Plant, ledger
from tests.testkit import frame_bytes

pytestmark = pytest.mark.reliability


def refusal(plant: Plant, name: str) -> dict[str, object]:
    return json.loads((plant.dirs["failed"] / f"{name}.reason.json").read_text())


@pytest.mark.parametrize("watch", ["inotify", "polling"])
def test_links_fifos_and_sockets_are_refused_with_a_reason_and_never_opened(tmp_path: Path, watch: str) -> None:
    plant = Plant(tmp_path)
    outside = tmp_path / "secret"
    outside.mkdir()
    target = outside / "part.tif"
    target_bytes = frame_bytes(3)
    target.write_bytes(target_bytes)
    os.mkfifo(outside / "pipe")
    daemon = plant.daemon("a", watch="polling = true\npoll_interval_s = 0.3\n" if watch == "polling" else "")
    daemon.start()
    good = frame_bytes(4)
    listener = socket.socket(socket.AF_UNIX)
    try:
        daemon.wait_ready()
        inbox = plant.dirs["inbox"]
        os.symlink(outside / "pipe", inbox / "fifo-link.tif")  # fault 3: a symlink to a FIFO
        os.symlink(target, inbox / "link.tif")  # fault 4: a symlink to a frame outside the inbox
        os.mkfifo(inbox / "fifo.tif")
        listener.bind(str(inbox / "sock.tif"))
        plant.drop("good.tif", good)  # arrives after the hostile ones: intake must still run
        plant.wait_for(lambda: plant.records() == 5, 60)
        target_stat = os.stat(target)
        assert daemon.stop() == 0  # SIGTERM is honoured: no thread hangs on a FIFO
    finally:
        listener.close()
        plant.stop_all()
    for name, kind in (
        ("fifo-link.tif", "symbolic link"),
        ("link.tif", "symbolic link"),
        ("fifo.tif", "FIFO"),
        ("sock.tif", "socket"),
    ):
        reason = refusal(plant, name)
        assert reason["reason"] == "unsupported" and kind in str(reason["message"]), reason
        assert not os.path.exists(plant.dirs["inbox"] / name) and os.path.lexists(plant.dirs["failed"] / name)
    assert os.readlink(plant.dirs["failed"] / "link.tif") == str(target)  # the link itself, moved aside
    assert target.read_bytes() == target_bytes and os.stat(target).st_mtime_ns == target_stat.st_mtime_ns
    (record,) = [Sidecar.model_validate_json(p.read_bytes()) for p in plant.dirs["outbox"].glob("*.json")]
    assert Path(record.input.original_path).name == "good.tif"
    assert not list(plant.dirs["outbox"].glob("link*")) and not list(plant.dirs["archive"].glob("link*"))
    events = [e for e in daemon.events() if e.get("event") == "frame_failed"]
    assert len(events) == 4
    result = ledger(plant.dirs, [daemon.work], [good])
    result.save(f"hostile_links_fifos_{watch}")
    assert (result.outputs, result.failure_records, result.lost, result.doubled, result.partial) == (1, 4, 0, 0, 0)


def long_and_odd_names() -> dict[str, str]:
    return {
        "ascii-255": "x" * 251 + ".tif",  # NAME_MAX exactly
        "utf8-255": "é" * 124 + "abc.tif",  # 255 bytes of two-byte characters
        "not-utf8": os.fsdecode(b"shot-\xff\xfe-latin1-\xe9.tif"),
    }


def test_any_name_the_filesystem_accepts_gets_its_result_and_keeps_its_exact_name(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    names = long_and_odd_names()
    assert all(len(os.fsencode(n)) <= 255 for n in names.values())
    daemon = plant.daemon("a")
    daemon.start()
    inputs = {name: frame_bytes(i) for i, name in enumerate(names.values())}
    try:
        daemon.wait_ready()
        for name, data in inputs.items():
            plant.drop(name, data)
        plant.wait_for(lambda: plant.records() == len(inputs), 60)
        # The same names again while the first results exist: ~N names within NAME_MAX; then garbage.
        for name, data in inputs.items():
            plant.drop(name, data[::-1][:10] + data[10:])  # a damaged frame: fails with a reason file
        plant.wait_for(lambda: plant.records() == 2 * len(inputs), 60)
        assert daemon.stop() == 0
    finally:
        plant.stop_all()
    records = [Sidecar.model_validate_json(p.read_bytes()) for p in plant.dirs["outbox"].glob("*.json")]
    exact = {}
    for record in records:
        original = (
            bytes.fromhex(record.input.original_path_hex)
            if record.input.original_path_hex
            else record.input.original_path.encode()
        )
        exact[os.fsdecode(Path(os.fsdecode(original)).name)] = record
    assert set(exact) == set(inputs)  # the sidecar keeps each exact name, bytes and all
    assert exact[names["not-utf8"]].input.original_path_hex is not None
    assert exact[names["ascii-255"]].input.original_path_hex is None
    reasons = [json.loads(p.read_text()) for p in plant.dirs["failed"].glob("*.reason.json")]
    assert sorted(r["reason"] for r in reasons) == ["unreadable"] * 3
    assert {bytes.fromhex(r["input_name_hex"]) for r in reasons if r["input_name_hex"]} == {
        os.fsencode(names["not-utf8"])
    }
    assert not list(daemon.work.glob("*.tif")) and not any(
        n.startswith(".") and n.endswith(".plan.json") for n in os.listdir(daemon.work)
    )
    result = ledger(plant.dirs, [daemon.work], list(inputs.values()) + [d[::-1][:10] + d[10:] for d in inputs.values()])
    result.save("long_and_odd_names")
    assert (result.outputs, result.failure_records, result.lost, result.doubled, result.partial) == (3, 3, 0, 0, 0)
