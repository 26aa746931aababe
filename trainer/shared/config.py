"""Every training value in one validated model, with the published settings as defaults.

Values come from three places, later ones winning: these defaults (``docs/method.md``), a TOML file
(``--config train.toml``, keys documented in ``train.example.toml``) and ``--set
section.key=value`` overrides on the command line.

Choices the project made (also in ``docs/method.md``), written down here once:

* The enhancer trains on ``in_ch = 1``: DR frames are gray, and the gray channel is
  replicated to 3 channels only on the CLIP side. ``in_ch = 3`` is refused.
* Iterations are counted globally over all phases; ``schedule.total_iters`` (50 K) includes
  the prompt initialisation (10 K) and the self-reconstruction warm-up (1 K). After the
  warm-up, stage 1's enhancer training runs ``enhancer_iters``; stage 2 then alternates
  prompt rounds of ``prompt_round_iters`` and enhancer rounds of ``enhancer_round_iters``
  until ``total_iters``.
* Batch sizes are global: under ``torchrun`` each of W processes takes batch / W samples,
  so the run sees the published batch whatever the GPU count.
* The feature distance ``|| a - b ||_2`` is the mean squared difference over the feature
  map's elements, so levels of different sizes weigh by alpha/gamma alone.
* The score's temperature is the loaded CLIP's own (``clip.logit_scale = "model"``:
  ``logit_scale.exp()`` of the model, 100 for OpenAI's weights, 100 for a randomly
  initialised CLIP), as in the reference implementation: at temperature 1 the score stays
  within about [0.12, 0.88], the m0 = 0.9 margin can never be met, every ranking hinge is
  always active, and the enhanced outputs drop out of the prompt-refinement gradient. A
  number overrides it.
* The feature maps of L_identity and L_CLAHE are computed at the CLIP tower's input size
  (``clip.feature_size = "model"``, 224 for RN101), as the reference does for the score and
  the feature maps alike, so each level sees structures of the size its weights alpha and
  gamma were chosen for; ``"train"`` computes them at the training crop size instead.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drdaemon import defaults

LEVELS = 5  # feature levels 0 (stem) .. 4 (layer4)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    crop_size: int = Field(
        512, ge=32, description="side of the square training sample, pixels (>= 32: layer4 is 1/32 of it)"
    )
    scale_min: float = Field(0.5, gt=0, le=1, description="smallest crop side, as a fraction of the frame's short side")
    hflip: bool = True
    vflip: bool = True
    rotate90: bool = True
    max_rotation_deg: float = Field(10.0, ge=0, le=45, description="extra small rotation, uniform in +-deg")
    low_percentile: float = Field(defaults.LOW_PERCENTILE, ge=0, lt=50)
    high_percentile: float = Field(defaults.HIGH_PERCENTILE, gt=50, le=100)
    clahe_clip_limit: float = Field(defaults.CLAHE_CLIP_LIMIT, gt=0)
    clahe_tile_grid: int = Field(defaults.CLAHE_TILE_GRID, ge=1)
    workers: int = Field(4, ge=0, description="DataLoader worker processes per training process")
    preview_frames: int = Field(4, ge=1, description="abnormal frames shown in the preview images")


class ClipConfig(Section):
    model: str = "RN101-quickgelu"
    weights: str = "openai"
    cache_dir: str | None = None
    logit_scale: Annotated[float, Field(gt=0)] | Literal["model"] = Field(
        "model", description='temperature on the cosine similarities of the score; "model": the CLIP\'s own'
    )
    feature_size: Literal["model", "train"] = Field(
        "model", description='feature maps of the feature losses at the CLIP input size ("model") or the crop size'
    )


class PromptConfig(Section):
    n_tokens: int = Field(16, ge=1)
    init_std: float = Field(0.02, gt=0)


class LossConfig(Section):
    beta: float = 0.9
    omega: float = 0.8
    alpha: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 0.5])
    gamma: list[float] = Field(default_factory=lambda: [1.0, 1.5, 1.5, 1.0, 0.0])
    warmup_alpha: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 0.5])
    warmup_gamma: list[float] = Field(default_factory=lambda: [1.0, 1.5, 1.5, 1.0, 0.0])
    m0: float = 0.9
    m1: float = 0.2
    m2: float = 0.2
    feature_norm: Literal["none", "input"] = Field(
        "none", description='"input": each feature level relative to the input frame\'s feature energy'
    )
    prompt_init_confidence: float = Field(
        0.95, gt=0.5, le=1.0, description="prompt initialisation stops pulling a sample classified this surely"
    )

    @field_validator("alpha", "gamma", "warmup_alpha", "warmup_gamma")
    @classmethod
    def _five_levels(cls, value: list[float]) -> list[float]:
        if len(value) != LEVELS:
            raise ValueError(f"needs one weight per feature level 0..4 ({LEVELS} values), got {len(value)}")
        return value


class ScheduleConfig(Section):
    total_iters: int = Field(50_000, ge=1)
    prompt_init_iters: int = Field(10_000, ge=0)
    warmup_iters: int = Field(1_000, ge=0)
    enhancer_iters: int = Field(9_000, ge=1, description="stage 1 enhancer training after the warm-up")
    prompt_round_iters: int = Field(1_000, ge=1, description="stage 2 prompt refinement per round")
    enhancer_round_iters: int = Field(4_000, ge=1, description="stage 2 enhancer fine-tuning per round")


class OptimConfig(Section):
    prompt_lr: float = Field(5e-6, gt=0)
    enhancer_lr: float = Field(2e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    prompt_batch: int = Field(8, ge=1)
    enhancer_batch: int = Field(16, ge=1)
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 disables clipping")


class EnhancerConfig(Section):
    in_ch: Literal[1] = 1
    illumination_scale: Literal[1, 2, 4, 8] = 1


class CycleGanConfig(Section):
    """The CycleGAN scheme's settings (``--scheme cyclegan``); see :mod:`trainer.cyclegan.scheme`."""

    constant_iters: int = Field(10_000, ge=0, description="iterations at the full learning rate")
    decay_iters: int = Field(10_000, ge=0, description="then a linear decay of the learning rate towards 0")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of generators and discriminators")
    betas: tuple[float, float] = (0.5, 0.999)
    batch: int = Field(1, ge=1, description="global batch of unpaired abnormal/normal samples")
    cycle_weight: float = Field(10.0, ge=0, description="weight of the cycle-consistency L1")
    identity_fraction: float = Field(0.5, ge=0, description="identity L1 weight as a fraction of cycle_weight")
    history_size: int = Field(50, ge=0, description="generated images kept per discriminator; 0 disables")
    disc_width: int = Field(64, ge=1, description="channels of the discriminator's first layer (C64)")
    feature_identity: float = Field(
        0.0, ge=0, description="weight of the feature identity prior on the forward generator (0: off)"
    )
    clahe_prior: float = Field(0.0, ge=0, description="weight of the CLAHE feature-map prior (0: off)")

    @property
    def feature_priors(self) -> bool:
        """Whether a frozen feature extractor ([clip]) is needed for the priors."""
        return self.feature_identity > 0 or self.clahe_prior > 0

    @property
    def total_iters(self) -> int:
        return self.constant_iters + self.decay_iters


class RunConfig(Section):
    scheme: Literal["clip", "cyclegan"] = Field("clip", description="training scheme; --scheme sets it")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    deterministic: bool = False
    run_dir: str = Field("", description="checkpoints, logs and previews; empty: <out without suffix>.run")
    checkpoint_every: int = Field(1_000, ge=1)
    preview_every: int = Field(1_000, ge=1)
    log_every: int = Field(50, ge=1)
    progress: bool = True


class TrainConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    enhancer: EnhancerConfig = Field(default_factory=EnhancerConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    cyclegan: CycleGanConfig = Field(default_factory=CycleGanConfig)

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.run.scheme == "cyclegan":  # the CLIP scheme's schedule does not apply
            if self.cyclegan.total_iters < 1:
                raise ValueError("cyclegan.constant_iters + cyclegan.decay_iters must be at least 1")
            return self
        s = self.schedule
        if s.prompt_init_iters + s.warmup_iters >= s.total_iters:
            raise ValueError("schedule.total_iters must exceed prompt_init_iters + warmup_iters")
        return self


def sections_read(cfg: TrainConfig) -> frozenset[str]:
    """The config sections this run reads; any other section is the other scheme's."""
    if cfg.run.scheme == "clip":
        return frozenset({"data", "clip", "prompts", "loss", "schedule", "optim", "enhancer", "run"})
    # the CycleGAN's feature priors take their frozen extractor from the [clip] table's CLIP
    return frozenset({"data", "enhancer", "run", "cyclegan"} | ({"clip"} if cfg.cyclegan.feature_priors else set()))


def scheme_budget(cfg: TrainConfig) -> str:
    """Which keys set the chosen scheme's number of iterations, with their values."""
    if cfg.run.scheme == "cyclegan":
        c = cfg.cyclegan
        return (
            f"cyclegan.constant_iters + cyclegan.decay_iters (now {c.constant_iters} + {c.decay_iters} = "
            f"{c.total_iters} iterations), e.g. --set cyclegan.constant_iters=6 --set cyclegan.decay_iters=6"
        )
    return f"schedule.total_iters (now {cfg.schedule.total_iters}; its phases are the other schedule.* keys)"


def check_overrides_apply(cfg: TrainConfig, overrides: Sequence[str]) -> None:
    """Refuse a ``--set`` of a section the chosen scheme never reads, naming the keys that do apply.

    A config file may hold both schemes' sections (train.example.toml documents every key);
    a ``--set`` on the command line is meant for this run, so one that would change nothing is an error.
    """
    scheme = cfg.run.scheme
    sections = sections_read(cfg)
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] in TrainConfig.model_fields and keys[0] not in sections:
            other = "cyclegan" if scheme == "clip" else "clip"
            raise TrainConfigError(
                f"--set {text}: {keys[0]}.* does not apply to --scheme {scheme} (it is read by --scheme {other} "
                f"only); the {scheme} scheme's training budget is {scheme_budget(cfg)}"
            )


class TrainConfigError(Exception):
    """A training configuration that cannot be used; the message names the key."""


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """The ``--set KEY=VALUE`` option of a trainer command (into ``overrides``); ``example`` is shown in its help."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config value, e.g. --set {example} (TOML syntax for the value; may repeat)",
    )


def override(key: str, value: object) -> str:
    """The ``--set`` text that :func:`parse_override` reads back as ``key`` = ``value`` (quoted as TOML)."""
    return f"{key}={tomli_w.dumps({'v': value}).partition('=')[2].strip()}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` to (path, value); the value is read as a TOML value when it parses."""
    if "=" not in text:
        raise TrainConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if len(path) < 2:
        raise TrainConfigError(f"--set key {key!r} must name a section and a key, e.g. schedule.total_iters")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as a model name or a path
    return path, value


def read_values(path: Path | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The TOML file's tables (none without a file) with each ``--set`` override applied, not yet validated.

    Shared by every config of the trainer's commands (:class:`TrainConfig`, the radiograph CLIP's
    :class:`trainer.radiograph.config.PretrainConfig`).
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TrainConfigError(f"cannot read training config {path}: {exc}") from exc
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TrainConfigError(f"--set {text!r}: {part!r} is not a section")
        node[keys[-1]] = value
    return values


def load_config(path: Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the TOML file, then each ``--set`` override."""
    values = read_values(path, overrides)
    try:
        cfg = TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise TrainConfigError(f"invalid training config: {exc}") from exc
    check_overrides_apply(cfg, overrides)
    return cfg
