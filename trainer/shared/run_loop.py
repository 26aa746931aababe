"""What every training run shares: the iteration loop and what happens around each step.

A run says how many iterations it has, what one iteration trains, and how it previews,
checkpoints and exports; :class:`RunLoop` runs them: the progress bar, TensorBoard losses,
periodic previews and checkpoints, Ctrl-C or SIGTERM finishing the iteration and
checkpointing, and the export once the last iteration is done. Two kinds of run use it:

* :class:`SchemeRun`, an enhancer training scheme on two folders of frames under a
  :class:`~trainer.shared.config.TrainConfig` (:class:`trainer.clip.scheme.Trainer` for CLIP,
  :class:`trainer.cyclegan.scheme.CycleGanTrainer`); DDP wrapping and autocast are set up here once;
* the radiograph CLIP's pretraining (:class:`trainer.radiograph.pretrain.PretrainRun`), on
  generated, captioned frames under its own config, whose preview is the judge.
"""

from __future__ import annotations

import contextlib
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trainer.shared.checkpoint import CHECKPOINT_NAME
from trainer.shared.config import TrainConfig
from trainer.shared.data import folder_summary, list_frames
from trainer.shared.distributed import DistContext, pick_device
from trainer.shared.runtime import StopRequest, configure_determinism, seed_everything

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


@dataclass
class TrainResult:
    iterations: int
    finished: bool
    final_losses: dict[str, float]
    duration_s: float
    weights: Path | None = None
    weights_sha256: str | None = None
    card: Path | None = None
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def log_line(iteration: int, total: int, phase: str, values: Mapping[str, float]) -> str:
    """One line of losses for runs without a progress bar (no TTY, or ``run.progress = false``)."""
    losses = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    return f"trainer: it {iteration}/{total} [{phase}] {losses}"


def default_run_dir(out: Path) -> Path:
    """``runs/demo/weights.safetensors`` -> ``runs/demo/weights.run``."""
    return out.parent / f"{out.stem}.run"


class LoopSettings(Protocol):
    """What the loop reads of a run's settings (a :class:`~trainer.shared.config.RunConfig` has them all)."""

    @property
    def progress(self) -> bool:
        """A progress bar on a TTY; log lines otherwise."""

    @property
    def log_every(self) -> int:
        """Iterations between loss lines (and TensorBoard points)."""

    @property
    def preview_every(self) -> int:
        """Iterations between previews; 0: none during the run (one still follows each :meth:`RunLoop.run`)."""

    @property
    def checkpoint_every(self) -> int:
        """Iterations between checkpoints."""


class RunLoop(ABC):
    """The loop of one run; subclasses set up their learners and implement the abstract steps."""

    losses: Mapping[str, Tensor | float]

    def __init__(self, out: Path, run_dir: Path, ctx: DistContext | None) -> None:
        """``out``: the file the export writes; ``run_dir``: checkpoints, TensorBoard logs, previews."""
        self.out, self.run_dir, self.ctx = Path(out), Path(run_dir), ctx or DistContext()
        self.iteration = 0
        self.elapsed_before = 0.0
        self.losses = {}
        self.show_bar = False

    @property
    @abstractmethod
    def settings(self) -> LoopSettings:
        """Progress, logging, preview and checkpoint intervals of this run."""

    @property
    @abstractmethod
    def total_iters(self) -> int: ...

    @abstractmethod
    def _loader(self, start: int, end: int) -> Iterable[dict[str, Tensor]]:
        """The batches of iterations ``start .. end-1`` (fewer ends the run there, unfinished)."""

    @abstractmethod
    def _label(self) -> str:
        """What the progress bar calls the iteration about to run (its phase)."""

    @abstractmethod
    def _train_one(self, batch: dict[str, Tensor]) -> Mapping[str, Tensor]:
        """Run iteration ``self.iteration`` on ``batch``; its losses."""

    @abstractmethod
    def save_checkpoint(self, started: float) -> Path | None: ...

    @abstractmethod
    def preview(self, writer: SummaryWriter | None) -> Path | None: ...

    @abstractmethod
    def export(self, duration: float) -> tuple[str, Path]: ...

    def _observe(self, phase: str, values: Mapping[str, float]) -> None:
        """Called at every log point with the losses just logged; a scheme may keep or check them."""
        return None  # nothing to keep by default (the CycleGAN scheme)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    # -- the run -------------------------------------------------------------------------
    def run(self, until: int | None = None) -> TrainResult:
        """Train up to iteration ``until`` (default: all of them), checkpoint, export when done."""
        total = self.total_iters
        end = min(until if until is not None else total, total)
        started = time.monotonic()
        main = self.ctx.is_main
        self.show_bar = main and self.settings.progress and sys.stderr.isatty()
        bar = tqdm(
            total=total,
            initial=self.iteration,
            disable=not self.show_bar,
            dynamic_ncols=True,
            unit="it",
        )
        writer = self._writer() if main else None
        label = ""
        stop = StopRequest()
        try:
            stop.install()
            for batch in self._loader(self.iteration, end):
                if self._label() != label:
                    label = self._label()
                    bar.set_description(label)
                self.losses = self._train_one(batch)
                self.iteration += 1
                self._after_step(bar, writer, started, label)
                if stop.requested:
                    self.save_checkpoint(started)
                    raise KeyboardInterrupt
        finally:
            stop.uninstall()
            bar.close()
        duration = self.elapsed_before + time.monotonic() - started
        self.elapsed_before, started = duration, time.monotonic()
        result = TrainResult(
            iterations=self.iteration,
            finished=self.iteration >= total,
            final_losses=self.loss_values(),
            duration_s=duration,
        )
        if main:
            result.checkpoint = self.save_checkpoint(started)
            self.preview(writer)
            if result.finished:
                result.weights_sha256, result.card = self.export(duration)
                result.weights = self.out
        if writer is not None:
            writer.close()
        return result

    def _after_step(self, bar: tqdm, writer: SummaryWriter | None, started: float, phase: str) -> None:
        it, r = self.iteration, self.settings
        bar.update(1)
        if it % r.log_every == 0 or it == self.total_iters:
            values = self.loss_values()
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            if self.ctx.is_main and not self.show_bar:
                print(log_line(it, self.total_iters, phase, values), file=sys.stderr, flush=True)
            self._observe(phase, values)
            if writer is not None:
                for name, value in values.items():
                    writer.add_scalar(f"loss/{name}", value, it)
        if r.preview_every and it % r.preview_every == 0 and self.ctx.is_main:
            self.preview(writer)
        if it % r.checkpoint_every == 0:
            self.save_checkpoint(started)

    def loss_values(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.losses.items()}

    def _writer(self) -> SummaryWriter:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))


class SchemeRun(RunLoop):
    """The run of one enhancer training scheme on two folders of frames, under a :class:`TrainConfig`."""

    amp_dtype: torch.dtype | None

    def __init__(self, cfg: TrainConfig, abnormal: Path, normal: Path, out: Path, ctx: DistContext | None) -> None:
        """The device, run folder and data lists, determinism, and the seed for what is built next."""
        super().__init__(out, Path(cfg.run.run_dir) if cfg.run.run_dir else default_run_dir(Path(out)), ctx)
        self.cfg = cfg
        self.device = pick_device(cfg.run.device, self.ctx)
        self.abnormal_files, self.normal_files = list_frames(abnormal), list_frames(normal)
        self.data_summary = {
            "abnormal": folder_summary(abnormal, self.abnormal_files),
            "normal": folder_summary(normal, self.normal_files),
        }
        configure_determinism(cfg.run.deterministic)
        seed_everything(cfg.run.seed)

    @property
    def settings(self) -> LoopSettings:
        return self.cfg.run

    def run_record(self) -> dict[str, Any]:
        """The model card's ``run``: how this process group ran."""
        return {
            "seed": self.cfg.run.seed,
            "world_size": self.ctx.world,
            "device": str(self.device),
            "precision": str(self.amp_dtype or torch.float32),
            "run_dir": str(self.run_dir),
        }

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.ctx.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)
