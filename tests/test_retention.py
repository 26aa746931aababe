"""Retention prunes exactly what its limits say, oldest first, and never an unfinished frame;
claiming pauses below the free-space floor of the output side."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drdaemon.cli import main
from drdaemon.config import ConfigError, RetentionConfig, load_settings
from drdaemon.engines import ClassicalEngine
from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.exits import EXIT_OK
from drdaemon.folders.claim import claim
from drdaemon.folders.commit import Finisher, fail_frame
from drdaemon.folders.space import FreeBytes
from drdaemon.service.frame import commit_frame, enhance_frame, load_frame, read_limits
from drdaemon.service.pruning import PassResult, retention_pass
from tests.testkit import daemon_settings, frame_bytes, in_process_daemon, wait_until

DAY = 86400.0
#: Uncompressed frames of this shape: every raw frame has the same size.
RAW_SHAPE = (24, 32)


class Tree:
    """A daemon's folders with frames committed by the daemon's own functions, aged at will."""

    # The frames the ``tree`` fixture commits (see there for what each one stands for).
    done: list[dict[str, Path]]
    in_flight: dict[str, Path]
    no_output: dict[str, Path]
    raw_gone: dict[str, Path]
    outside: dict[str, Path]
    mid_commit: Path
    young: dict[str, Path]

    def __init__(self, root: Path) -> None:
        self.settings = daemon_settings(root, watch={})
        self.folders = self.settings.folders
        for _, path in self.folders:
            path.mkdir(parents=True)
        self.finisher = Finisher.for_folders(self.folders, preview=False)
        self.engine = ClassicalEngine()
        self.seed = 0

    def commit(self, name: str, age_days: float) -> dict[str, Path]:
        """A finished frame: output and sidecar in the outbox, its raw frame in the archive."""
        self.seed += 1
        (self.folders.inbox / name).write_bytes(frame_bytes(self.seed, RAW_SHAPE))
        item = claim(self.folders.inbox / name, self.folders.work, time.time(), time.monotonic())
        assert item is not None
        committed = commit_frame(
            enhance_frame(load_frame(item, read_limits(self.settings.input)), self.engine), self.finisher
        )
        files = {
            "raw": Path(committed.sidecar.input.path),
            "output": committed.output,
            "sidecar": committed.output.with_name(committed.output.name + ".json"),
        }
        self.age(files, age_days)
        return files

    @staticmethod
    def age(files: dict[str, Path], days: float) -> None:
        when = time.time() - days * DAY
        for path in files.values():
            if path.exists():
                os.utime(path, (when, when))

    def snapshot(self) -> dict[str, bytes]:
        folders = [*self.folders, ("elsewhere", self.folders.inbox.parent / "elsewhere")]
        return {
            f"{name}/{p.name}": p.read_bytes()
            for name, folder in folders
            if folder.is_dir()
            for p in sorted(folder.iterdir())
        }


def root_of(tree: Tree) -> Path:
    return tree.folders.inbox.parent


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """Six finished frames 10 to 5 days old, and every kind of frame retention must leave alone."""
    t = Tree(tmp_path)
    t.done = [t.commit(f"done{i}.tif", age_days=10 - i) for i in range(6)]
    # Committed, but the raw frame is still linked in work/ (the commit's last step not done): in flight.
    t.in_flight = t.commit("inflight.tif", age_days=20)
    os.link(t.in_flight["raw"], t.folders.work / "inflight.tif")
    # Its output was taken away (a consumer moved it): the raw frame must stay.
    t.no_output = t.commit("nooutput.tif", age_days=15)
    t.no_output["output"].unlink()
    # An earlier pass removed the raw frame and was cut short: the results are still to go.
    t.raw_gone = t.commit("rawgone.tif", age_days=12)
    t.raw_gone["raw"].unlink()
    # Its sidecar says the raw frame rests outside the archive (folders moved, or `drdaemon enhance`): kept.
    t.outside = t.commit("outside.tif", age_days=0)
    elsewhere = root_of(t) / "elsewhere"
    elsewhere.mkdir()
    moved = t.outside["raw"].rename(elsewhere / "outside.tif")
    record = json.loads(t.outside["sidecar"].read_text())
    record["input"]["path"] = str(moved)
    t.outside["sidecar"].write_text(json.dumps(record))
    t.outside["raw"] = moved
    Tree.age(t.outside, 25)
    # A raw frame linked into the archive whose sidecar is not written yet (mid-commit), and a failed frame.
    t.mid_commit = t.folders.archive / "midcommit.tif"
    t.mid_commit.write_bytes(frame_bytes(99, RAW_SHAPE))
    Tree.age({"raw": t.mid_commit}, 30)
    (t.folders.inbox / "bad.tif").write_bytes(b"not a tiff" * 10)
    bad = claim(t.folders.inbox / "bad.tif", t.folders.work, time.time(), time.monotonic())
    assert bad is not None
    fail_frame(bad, FrameError(Stage.READ, Reason.UNREADABLE, "garbage"), t.finisher)
    Tree.age({p.name: p for p in t.folders.failed.iterdir()}, 30)
    # Finished a moment ago: inside the grace another daemon's commit may still need.
    t.young = t.commit("young.tif", age_days=0)
    return t


def pruned_names(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    assert all(after[k] == before[k] for k in after), "a file that stayed was changed"
    assert set(after) <= set(before)
    return set(before) - set(after)


def files_of(*frames: dict[str, Path]) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for frame in frames for p in frame.values() if p.exists()}


def run_pass(tree: Tree, free: FreeBytes = lambda _p: 10**15, **limits: Any) -> PassResult:
    return retention_pass(tree.folders, RetentionConfig(**limits), free)


def test_an_age_limit_prunes_the_older_finished_frames_and_nothing_unfinished(tree: Tree) -> None:
    before = tree.snapshot()
    # done0..2 are 10, 9, 8 days old; rawgone 12 (its results only). The in-flight frame (20 days) and
    # the raw frame without its output (15 days) are older still, and kept.
    expected = files_of(*tree.done[:3], tree.raw_gone)
    result = run_pass(tree, max_age_days=7.5)
    assert pruned_names(before, tree.snapshot()) == expected
    assert [p.policy for p in result.pruned] == ["max_age"] * 4
    assert result.plan.held == 3 and result.plan.behind == []
    assert tree.in_flight["raw"].exists() and tree.no_output["raw"].exists() and tree.mid_commit.exists()
    assert all(p.exists() for p in tree.outside.values())
    assert len(list(tree.folders.failed.iterdir())) == 2 and tree.young["sidecar"].exists()


def test_a_size_limit_prunes_the_oldest_until_the_folder_fits(tree: Tree) -> None:
    raw = len(frame_bytes(0, RAW_SHAPE))
    archive = sum(p.stat().st_size for p in tree.folders.archive.iterdir())
    before = tree.snapshot()
    # Two raw frames too many: rawgone (no raw to free) goes first, then done0 and done1.
    expected = files_of(tree.raw_gone, *tree.done[:2])
    result = run_pass(tree, archive_max_size=archive - 2 * raw)
    assert pruned_names(before, tree.snapshot()) == expected
    assert {p.policy for p in result.pruned} == {"max_size"} and result.plan.behind == []


def test_a_size_limit_that_the_rules_forbid_reaching_says_pruning_is_behind(tree: Tree) -> None:
    before = tree.snapshot()
    expected = files_of(tree.raw_gone, *tree.done)  # every finished frame past the grace, nothing else
    result = run_pass(tree, archive_max_size=1)
    assert pruned_names(before, tree.snapshot()) == expected
    assert result.plan.behind == ["archive_max_size"]
    assert result.plan.held == 4  # in flight, no output, raw outside the archive, young


def test_a_free_space_floor_prunes_the_oldest_until_enough_is_free(tree: Tree) -> None:
    floor = 10**9
    done0 = sum(p.stat().st_size for p in tree.done[0].values())
    before = tree.snapshot()
    # The disk (injected reading) lacks one frame's worth: rawgone's results and done0 make it up.
    expected = files_of(tree.raw_gone, tree.done[0])
    result = run_pass(tree, free=lambda _p: floor - done0 + 1, min_free_space=floor)
    assert pruned_names(before, tree.snapshot()) == expected
    assert {p.policy for p in result.pruned} == {"min_free"} and result.plan.behind == []


def test_prune_dry_run_lists_what_a_real_pass_removes_and_removes_nothing(
    tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[folders]\ninbox = "inbox"\noutbox = "outbox"\narchive = "archive"\nfailed = "failed"\n'
        'work = "work"\n[retention]\nmax_age_days = 7.5\n[logging]\nformat = "json"\n'
    )
    before = tree.snapshot()
    expected = files_of(*tree.done[:3], tree.raw_gone)
    assert main(["prune", "--config", str(config), "--dry-run"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert tree.snapshot() == before
    assert main(["prune", "--config", str(config)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert pruned_names(before, tree.snapshot()) == expected
    for frame in (*tree.done[:3], tree.raw_gone):
        assert str(frame["sidecar"]) in listed and str(frame["sidecar"]) in out
    assert "would prune 4 frame(s)" in listed and "pruned 4 frame(s)" in out
    assert err.count('"event": "frame_pruned"') == 4  # every pruning logged


def test_retention_settings_read_sizes_with_units_and_refuse_a_floor_below_the_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRDAEMON_RETENTION__ARCHIVE_MAX_SIZE", "2 TB")
    config = tmp_path / "c.toml"
    config.write_text('[retention]\nmin_free_space = "50 GiB"\nclaim_min_free_space = "10 GiB"\n')
    settings = load_settings(config)
    assert settings.retention.archive_max_size == 2 * 10**12 and settings.retention.min_free_space == 50 * 2**30
    config.write_text('[retention]\nmin_free_space = "5 GiB"\nclaim_min_free_space = "10 GiB"\n')
    with pytest.raises(ConfigError, match="retention"):
        load_settings(config)


# -- the running daemon -----------------------------------------------------------------------
def test_claiming_pauses_below_the_output_floor_and_resumes_above_it(tmp_path: Path) -> None:
    floor = 10**9
    disk = {"free": floor - 1}
    daemon = in_process_daemon(tmp_path, lambda _p: disk["free"], retention={"claim_min_free_space": floor})
    folders = daemon.folders
    for i in range(3):
        (folders.inbox / f"f{i}.tif").write_bytes(frame_bytes(i, RAW_SHAPE))
    gauge = daemon.metrics.registry.get_sample_value
    statuses: list[int] = []
    with capture_logs() as events:
        thread = threading.Thread(target=lambda: statuses.append(daemon.run(install_signal_handlers=False)))
        thread.start()
        try:
            wait_until(lambda: gauge("drdaemon_output_blocked", {"reason": "low_space"}) == 1)
            time.sleep(1.0)
            assert len(list(folders.inbox.glob("*.tif"))) == 3  # nothing claimed while the disk is low
            assert gauge("drdaemon_folder_free_bytes", {"folder": "outbox"}) == floor - 1
            disk["free"] = floor + 1
            wait_until(lambda: len(list(folders.outbox.glob("*.json"))) == 3)
            assert gauge("drdaemon_output_blocked", {"reason": "low_space"}) == 0
        finally:
            daemon.request_stop()
            thread.join(30)
    assert statuses == [0]
    names = [(e["event"], e.get("reason", e.get("was"))) for e in events if e["event"].startswith("output_")]
    assert names == [("output_blocked", "low_space"), ("output_resumed", "low_space")]


def test_the_daemon_prunes_on_its_timer_and_counts_it(tree: Tree) -> None:
    daemon = in_process_daemon(
        tree.folders.inbox.parent, lambda _p: 10**15, retention={"max_age_days": 7.5, "interval_s": 3600}
    )
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(daemon.run(install_signal_handlers=False)))
    thread.start()
    gauge = daemon.metrics.registry.get_sample_value
    try:
        wait_until(lambda: (gauge("drdaemon_retention_last_pass_timestamp_seconds") or 0.0) > 0)
    finally:
        daemon.request_stop()
        thread.join(30)
    assert statuses == [0]
    assert gauge("drdaemon_retention_pruned_frames_total", {"policy": "max_age"}) == 4
    assert gauge("drdaemon_retention_pruned_bytes_total", {"folder": "archive"}) == 3 * len(frame_bytes(0, RAW_SHAPE))
    assert gauge("drdaemon_retention_behind") == 0
    assert not tree.done[2]["sidecar"].exists() and tree.done[3]["sidecar"].exists()
    assert tree.in_flight["raw"].exists() and tree.no_output["raw"].exists()
