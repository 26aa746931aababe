"""The radiograph CLIP's pretraining settings, in the trainer's config style.

Values come from three places, later ones winning, as for ``python -m trainer``
(:mod:`trainer.shared.config`): these defaults (the settings of the shipped checkpoint but its
step count), a TOML file (``--config pretrain.toml``, every key documented in
``pretrain_clip.example.toml``) and ``--set section.key=value`` overrides. The command's own
flags (``--frames``, ``--steps``, ``--lr``, ...) are overrides of one key each
(:data:`FLAG_KEYS`), so they win over the file.

Everything but the ``[run]`` table's bookkeeping decides the weights: it is stored in the
checkpoint, and ``--resume`` refuses a checkpoint made with other values (:func:`training_identity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from trainer.radiograph.data import STATES
from trainer.shared.config import Section, TrainConfigError, read_values

#: The model config shipped with the trainer (trainer/model_configs/radiograph-clip.json).
DEFAULT_MODEL = "radiograph-clip"


class ModelSection(Section):
    config: str = Field(
        DEFAULT_MODEL,
        description="open_clip model config: a name shipped in trainer/model_configs or the path of a JSON file",
    )
    init: str | None = Field(
        None, description="open_clip state dict (.safetensors) to start from, e.g. an earlier run's; unset: random"
    )


class DataSection(Section):
    frames: int = Field(
        5400,
        ge=len(STATES),
        description=f"captioned training frames, {len(STATES)} states per part (parts = frames // {len(STATES)})",
    )
    size: int = Field(256, ge=64, description="side of the generated frames, pixels")
    held_out_parts: int = Field(40, ge=1, description="parts of the held-out set the judge scores")
    scale_min: float = Field(
        0.5, gt=0, le=1, description="smallest random crop, as a fraction of the frame's short side (as the trainer's)"
    )

    @property
    def parts(self) -> int:
        return max(1, self.frames // len(STATES))


class ScheduleSection(Section):
    steps: int = Field(2000, ge=1, description="optimiser steps")
    warmup_steps: int = Field(50, ge=0, description="linear learning-rate warm-up, then cosine decay to a tenth")


class OptimSection(Section):
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate after the warm-up")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    parts_per_batch: int = Field(8, ge=1, description="parts in one batch")
    states_per_part: int = Field(6, ge=1, description="states of each part in one batch, the label among them")


class LossSection(Section):
    zero_shot_weight: float = Field(1.0, ge=0, description="weight of the zero-shot prompt term (0 leaves it out)")
    rank_weight: float = Field(
        1.0, ge=0, description="weight of the within-part ranking term on PSNR (0 leaves it out)"
    )
    rank_margin: float = Field(0.05, ge=0, description="score margin the better rendering of a pair must win by")
    rank_min_db: float = Field(1.0, ge=0, description="PSNR gap (dB) from which a pair is ranked")
    rank_ssim_weight: float = Field(0.0, ge=0, description="weight of the within-part ranking term on SSIM (0: off)")
    rank_min_ssim: float = Field(0.02, ge=0, description="SSIM gap from which a pair is ranked by that term")


class RunSection(Section):
    seed: int = Field(0, description="seed of the data, the initialisation and the batches")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; unset: torch's choice")
    minutes: float | None = Field(
        None,
        ge=0,
        description="stop after this many minutes of training (checkpointed, exported, judged); unset: no limit",
    )
    judge_every: int = Field(0, ge=0, description="judge the held-out parts every N steps (0: at the end only)")
    log_every: int = Field(25, ge=1, description="steps between loss lines without a progress bar")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints (OUT/checkpoint.pt)")
    progress: bool = Field(True, description="progress bars (the loss lines replace the training bar without a TTY)")

    @property
    def preview_every(self) -> int:
        """The run loop's preview is the judge (:class:`trainer.shared.run_loop.LoopSettings`)."""
        return self.judge_every


class PretrainConfig(Section):
    """Everything a pretraining run depends on (stored in the checkpoint and the model card)."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    loss: LossSection = Field(default_factory=LossSection)
    run: RunSection = Field(default_factory=RunSection)


#: The run settings that do not change the weights: a resume may change them.
BOOKKEEPING = frozenset({"threads", "minutes", "judge_every", "log_every", "checkpoint_every", "progress"})

#: ``python -m trainer.pretrain_clip``'s flags (argparse ``dest``) and the key each one sets.
FLAG_KEYS = {
    "model_config": "model.config",
    "init": "model.init",
    "frames": "data.frames",
    "size": "data.size",
    "held_out_parts": "data.held_out_parts",
    "steps": "schedule.steps",
    "lr": "optim.lr",
    "parts_per_batch": "optim.parts_per_batch",
    "states_per_part": "optim.states_per_part",
    "zero_shot_weight": "loss.zero_shot_weight",
    "rank_weight": "loss.rank_weight",
    "rank_ssim_weight": "loss.rank_ssim_weight",
    "seed": "run.seed",
    "threads": "run.threads",
    "minutes": "run.minutes",
    "judge_every": "run.judge_every",
    "log_every": "run.log_every",
}


def training_identity(cfg: PretrainConfig) -> dict[str, Any]:
    """The values that decide the weights: the config without the ``[run]`` bookkeeping."""
    return cfg.model_dump(mode="json", exclude={"run": set(BOOKKEEPING)})


def load_pretrain_config(path: Path | None = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Defaults, then the TOML file, then each ``--set`` override (flags included)."""
    try:
        return PretrainConfig.model_validate(read_values(path, overrides))
    except ValidationError as exc:
        raise TrainConfigError(f"invalid pretraining config: {exc}") from exc
