"""Training samples: daemon reader and window, keyed determinism, CLAHE prior, rank slices."""

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from tests.trainer_testkit import make_data
from trainer.shared.config import DataConfig
from trainer.shared.data import DataError, IterationBatches, SampleKey, TrainingSamples, folder_summary, list_frames


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return make_data(tmp_path)


def samples(folders: tuple[Path, Path], **kw: Any) -> TrainingSamples:
    abnormal, normal = folders
    cfg = DataConfig(crop_size=32, workers=0, **kw)
    return TrainingSamples(list_frames(abnormal), list_frames(normal), cfg, seed=7)


def test_sample_is_a_unit_range_crop_of_the_right_size(folders: tuple[Path, Path]) -> None:
    item = samples(folders)[SampleKey(3, 1).encode()]
    assert set(item) == {"abnormal", "normal", "clahe"}
    for tensor in item.values():
        assert tensor.shape == (1, 32, 32) and tensor.dtype == torch.float32
        assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    # The dark, low-contrast abnormal frames are stretched by the percentile window.
    assert float(item["abnormal"].max() - item["abnormal"].min()) > 0.5


def test_same_key_same_sample_other_key_other_sample(folders: tuple[Path, Path]) -> None:
    ds = samples(folders)
    a, b = ds[SampleKey(5, 0).encode()], ds[SampleKey(5, 0).encode()]
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = ds[SampleKey(5, 1).encode()]
    assert not torch.equal(a["abnormal"], c["abnormal"])


def test_clahe_prior_raises_local_contrast(folders: tuple[Path, Path]) -> None:
    item = samples(folders, max_rotation_deg=0.0)[SampleKey(0, 0).encode()]

    def grad(t: torch.Tensor) -> float:
        return float(t[0].diff(dim=0).abs().mean() + t[0].diff(dim=1).abs().mean())

    assert not torch.equal(item["clahe"], item["abnormal"])
    assert grad(item["clahe"]) > grad(item["abnormal"])


def test_eight_bit_png_frames_are_read_too(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    png = tmp_path / "png"
    png.mkdir()
    cv2.imwrite(str(png / "a.png"), (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
    cfg = DataConfig(crop_size=32, workers=0)
    ds = TrainingSamples(list_frames(png), list_frames(folders[1]), cfg, 0)
    assert ds[0]["abnormal"].shape == (1, 32, 32)


def test_the_schedule_decides_what_a_sample_carries(folders: tuple[Path, Path]) -> None:
    from trainer.shared.config import ScheduleConfig

    schedule = ScheduleConfig(total_iters=10, prompt_init_iters=2, warmup_iters=1, enhancer_iters=3)
    abnormal, normal = folders
    ds = TrainingSamples(list_frames(abnormal), list_frames(normal), DataConfig(crop_size=32), 0, schedule)
    assert set(ds[SampleKey(1, 0).encode()]) == {"abnormal", "normal"}  # prompt initialisation
    assert set(ds[SampleKey(2, 0).encode()]) == {"abnormal", "clahe"}  # warm-up


def test_ranks_split_the_global_batch_without_overlap() -> None:
    single = list(IterationBatches(10, [8, 8]))
    halves = [list(IterationBatches(10, [8, 8], rank=r, world=2)) for r in range(2)]
    for it in range(2):
        assert halves[0][it] + halves[1][it] == single[it]
    with pytest.raises(DataError, match="divisible"):
        IterationBatches(0, [8, 6], rank=0, world=4)


def test_empty_folder_and_summary(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no frames"):
        list_frames(tmp_path / "empty")
    files = list_frames(folders[0])
    summary = folder_summary(folders[0], files)
    digest = summary["file_list_sha256"]
    assert summary["files"] == 3 and isinstance(digest, str) and len(digest) == 64
    (folders[0] / "frame_00.tif").write_bytes(b"II*\x00changed")
    assert folder_summary(folders[0], files)["file_list_sha256"] != summary["file_list_sha256"]


def test_worker_processes_deliver_the_same_batches(folders: tuple[Path, Path]) -> None:
    from trainer.shared.data import make_loader

    ds = samples(folders)
    inline = list(make_loader(ds, IterationBatches(4, [2, 3, 2]), workers=0, pin_memory=False))
    parallel = list(make_loader(ds, IterationBatches(4, [2, 3, 2]), workers=2, pin_memory=False))
    assert len(inline) == len(parallel) == 3
    for a, b in zip(inline, parallel, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unreadable_frame_is_reported_by_name(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.tif").write_bytes(b"II*\x00" + b"\x00" * 12)
    ds = TrainingSamples(list_frames(broken), list_frames(folders[1]), DataConfig(crop_size=32), 0)
    with pytest.raises(DataError, match=r"cut\.tif"):
        ds[0]
