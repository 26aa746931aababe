"""Training samples from two unpaired folders, with the daemon's reader and normalisation.

Every sample is a pure function of ``(seed, iteration, slot)``: the batch sampler hands the
dataset integer keys, and the dataset seeds its own generator from the key to pick the frame
and the augmentation. The data order therefore needs no state of its own: a resumed run, a
run with more DataLoader workers and a ``torchrun`` run (each rank takes its slice of the
global batch's slots) all see the same samples. Frames are drawn uniformly with replacement.

A sample is the whole frame normalised with the daemon's percentile window
(:func:`drdaemon.kernels.window.frame_to_unit`), then a random square crop (side between
``scale_min`` and 1 of the short side) resized to ``crop_size`` with area interpolation, a
small random rotation, a random quarter turn and flips. The CLAHE prior ``H(I_b)`` is the
daemon's OpenCV CLAHE (:func:`drdaemon.kernels.tone.clahe_u16`) of that very sample at
16 bits, so it is pixel-aligned with what the enhancer sees. No CLIP work happens here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from drdaemon.errors import FrameError
from drdaemon.io.readers import FRAME_FORMATS, ReaderRegistry, read_frame
from drdaemon.kernels.tone import clahe_u16
from drdaemon.kernels.window import U16_MAX, frame_to_unit, unit_to_u16
from trainer.shared.config import DataConfig, ScheduleConfig
from trainer.shared.schedule import phase_at

#: Slots per iteration in a sample key; the global batch must stay below it.
KEY_STRIDE = 1 << 16
ABNORMAL_STREAM, NORMAL_STREAM = 0, 1


class DataError(Exception):
    """A data folder that cannot be trained on."""


def list_frames(folder: Path, formats: ReaderRegistry = FRAME_FORMATS) -> list[Path]:
    """The frames in ``folder`` (not recursive), sorted by name so the list is reproducible.

    A frame is a file with a suffix of a format the daemon reads without configuration
    (:meth:`~drdaemon.io.readers.ReaderRegistry.self_describing`: TIFF, PNG, DICOM, ``.his``;
    not ``.raw``, whose layout is the daemon's ``[input.raw]``, which the trainer has not).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    readable = formats.self_describing()
    files = sorted(p for p in folder.iterdir() if p.is_file() and readable.takes_suffix(p.name))
    if not files:
        raise DataError(f"no frames ({', '.join(readable.suffixes())}) in {folder}")
    return files


def folder_summary(folder: Path, files: list[Path]) -> dict[str, object]:
    """File count and a sha256 over the sorted names and sizes: identifies the data in the model card."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    return {"path": str(Path(folder).resolve()), "files": len(files), "file_list_sha256": digest.hexdigest()}


@dataclass(frozen=True)
class SampleKey:
    iteration: int
    slot: int

    def encode(self) -> int:
        return self.iteration * KEY_STRIDE + self.slot


def random_view(unit: np.ndarray, rng: np.random.Generator, cfg: DataConfig) -> np.ndarray:
    """A random augmented square view of a [0, 1] frame, ``crop_size`` pixels a side."""
    h, w = unit.shape
    side = max(1, round(rng.uniform(cfg.scale_min, 1.0) * min(h, w)))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    size = cfg.crop_size
    crop = np.ascontiguousarray(unit[top : top + side, left : left + side])
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    view = cv2.resize(crop, (size, size), interpolation=interpolation)
    if cfg.max_rotation_deg > 0:
        angle = float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
        matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
        view = cv2.warpAffine(view, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if cfg.rotate90:
        view = np.rot90(view, int(rng.integers(0, 4)))
    if cfg.hflip and rng.random() < 0.5:
        view = view[:, ::-1]
    if cfg.vflip and rng.random() < 0.5:
        view = view[::-1, :]
    return np.ascontiguousarray(view, dtype=np.float32).clip(0.0, 1.0)


def clahe_prior(view: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """CLAHE of a [0, 1] sample computed at 16 bits, back in [0, 1]."""
    return clahe_u16(unit_to_u16(view), cfg.clahe_clip_limit, cfg.clahe_tile_grid).astype(np.float32) / U16_MAX


def load_unit(path: Path, cfg: DataConfig, formats: ReaderRegistry = FRAME_FORMATS) -> np.ndarray:
    """A frame read by the daemon's reader and normalised by the daemon's window."""
    try:
        frame = read_frame(path, formats=formats).pixels
    except FrameError as exc:  # re-raised as DataError so it crosses the worker boundary intact
        raise DataError(f"cannot train on {path}: {exc}") from exc
    unit, _ = frame_to_unit(frame, cfg.low_percentile, cfg.high_percentile)
    return unit


class TrainingSamples(Dataset[dict[str, torch.Tensor]]):
    """Maps sample keys to ``{"abnormal", "clahe" | "normal"}`` tensors of shape (1, S, S).

    With a schedule, the key's iteration decides the content: prompt phases need abnormal
    and normal samples, enhancer phases abnormal samples and their CLAHE prior. Without one
    (tests, tools) every sample carries all three.
    """

    def __init__(
        self,
        abnormal: list[Path],
        normal: list[Path],
        cfg: DataConfig,
        seed: int,
        schedule: ScheduleConfig | None = None,
        formats: ReaderRegistry = FRAME_FORMATS,
    ) -> None:
        self.abnormal, self.normal, self.cfg, self.seed, self.schedule = abnormal, normal, cfg, seed, schedule
        #: The frame formats the files are read with (the daemon's).
        self.formats = formats

    def _view(self, files: list[Path], stream: int, key: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, key])
        path = files[int(rng.integers(0, len(files)))]
        return random_view(load_unit(path, self.cfg, self.formats), rng, self.cfg)

    def _content(self, key: int) -> tuple[bool, bool]:
        """(with normal, with CLAHE prior) for the iteration the key belongs to."""
        if self.schedule is None:
            return True, True
        prompts = phase_at(key // KEY_STRIDE, self.schedule).trains_prompts
        return prompts, not prompts

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        with_normal, with_clahe = self._content(key)
        view = self._view(self.abnormal, ABNORMAL_STREAM, key)
        sample = {"abnormal": torch.from_numpy(view)[None]}
        if with_clahe:
            sample["clahe"] = torch.from_numpy(clahe_prior(view, self.cfg))[None]
        if with_normal:
            sample["normal"] = torch.from_numpy(self._view(self.normal, NORMAL_STREAM, key))[None]
        return sample

    def __len__(self) -> int:  # keys are unbounded; the sampler decides how many are drawn
        return KEY_STRIDE


class IterationBatches(Sampler[list[int]]):
    """One batch of keys per iteration from ``start`` on: this rank's share of each global batch.

    ``global_batches[i]`` is the global batch size of iteration ``start + i`` (the prompt and
    enhancer phases use different sizes), so one loader, and one set of worker processes,
    serves the whole run.
    """

    def __init__(self, start: int, global_batches: Sequence[int], rank: int = 0, world: int = 1) -> None:
        for size in set(global_batches):
            if size % world:
                raise DataError(f"batch size {size} is not divisible by {world} processes")
            if size > KEY_STRIDE:
                raise DataError(f"batch size {size} exceeds {KEY_STRIDE}")
        self.start, self.sizes, self.rank, self.world = start, list(global_batches), rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for offset, size in enumerate(self.sizes):
            per_rank = size // self.world
            first = self.rank * per_rank
            yield [SampleKey(self.start + offset, first + j).encode() for j in range(per_rank)]

    def __len__(self) -> int:
        return len(self.sizes)


def _quiet_worker(_: int) -> None:
    cv2.setNumThreads(1)  # the loader's parallelism is its processes


def make_loader(
    samples: TrainingSamples, batches: IterationBatches, workers: int, pin_memory: bool
) -> DataLoader[dict[str, torch.Tensor]]:
    """Worker processes are spawned, not forked: a fork after OpenCV or torch started their
    thread pools in the parent can deadlock the child."""
    if not workers:
        return DataLoader(samples, batch_sampler=batches, num_workers=0, pin_memory=pin_memory)
    return DataLoader(
        samples,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_quiet_worker,
        multiprocessing_context="spawn",
        prefetch_factor=4,
    )


def preview_samples(files: list[Path], cfg: DataConfig) -> torch.Tensor:
    """Fixed previews: the centre square of the first frames, resized to ``crop_size``; (K, 1, S, S)."""
    views = []
    for path in files[: cfg.preview_frames]:
        unit = load_unit(path, cfg)
        h, w = unit.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = np.ascontiguousarray(unit[top : top + side, left : left + side])
        views.append(cv2.resize(crop, (cfg.crop_size, cfg.crop_size), interpolation=cv2.INTER_AREA))
    return torch.from_numpy(np.stack(views).astype(np.float32))[:, None]
