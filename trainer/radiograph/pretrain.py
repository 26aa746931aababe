"""``python -m trainer.pretrain_clip``: pretrain a small CLIP on captioned, generated radiographs.

The data is :mod:`trainer.radiograph.data` (every part in every graded exposure state, a
caption per frame). A batch holds ``parts_per_batch`` parts with ``states_per_part`` of
their states each (the well exposed label always among them), every state of a part seen
through the same random crop, rotation and flips as the trainer makes them
(:func:`trainer.shared.data.random_view`), so the states of one part differ only in exposure.

The objective knows the grades:

* **class-aware contrastive**: image-to-caption and caption-to-image cross-entropy whose
  targets spread evenly over every caption of the same state in the batch, so two frames
  both "slightly too dark" are not pushed apart as negatives;
* **zero-shot term**: cross-entropy of each clearly well or badly exposed frame between the
  two prompts the judge uses (near misses left out);
* **ranking term**: within a part, a rendering with a higher PSNR against the label (by at
  least ``rank_min_db``) must score higher (cosine to the well prompt minus cosine to the
  bad prompt) by ``rank_margin``, and likewise for SSIM (gap ``rank_min_ssim``, weight
  ``rank_ssim_weight``): the judge learns the order the labels define, not only the classes.

The run is the trainer's shared loop (:class:`trainer.shared.run_loop.RunLoop`: progress,
log lines, TensorBoard losses under ``OUT/tensorboard``, periodic checkpoints, Ctrl-C or
SIGTERM finishing the step and checkpointing), its settings a
:class:`~trainer.radiograph.config.PretrainConfig` (a TOML file, ``--set`` overrides and the
command's flags), its checkpoint the trainer's format (:mod:`trainer.shared.checkpoint`, RNG
states included). Each batch is a pure function of (seed, step), so ``--resume`` continues
exactly: bit for bit the weights of an uninterrupted run. The loop's preview is the judge on
the held-out parts (``run.judge_every``). The result is an open_clip checkpoint
(``open_clip_model.safetensors`` plus ``open_clip_config.json``, so ``local-dir:DIR`` works
too) and ``model_card.json`` with the data recipe, the config, the losses and the judge's
figures (:mod:`trainer.radiograph.judge`) on held-out parts and on real CR frames. The trainer
loads it with ``--clip radiograph-clip --clip-weights DIR/open_clip_model.safetensors``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drdaemon.io.durable import file_sha256
from trainer.radiograph.config import (
    FLAG_KEYS,
    PretrainConfig,
    load_pretrain_config,
    training_identity,
)
from trainer.radiograph.data import (
    HELD_OUT_CLIPPED_PERCENT,
    HELD_OUT_SET,
    PRETRAIN_SET,
    STATE_INDEX,
    STATES,
    TEMPLATES,
    CaptionedSet,
    make_captioned_set,
)
from trainer.radiograph.judge import JudgeReport, clip_input, judge_captioned, judge_real, real_frame_paths
from trainer.shared.checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from trainer.shared.clip_weights import read_model_config
from trainer.shared.config import DataConfig, TrainConfigError, add_set_option, override
from trainer.shared.data import random_view
from trainer.shared.errors import TrainerError
from trainer.shared.export import package_versions
from trainer.shared.run_loop import LoopSettings, RunLoop
from trainer.shared.runtime import seed_everything

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

WEIGHTS_NAME = "open_clip_model.safetensors"
BATCH_STREAM, VIEW_STREAM = 11, 12
MODEL_NAME = "radiograph-clip"
#: The checkpoint's ``scheme``: a trainer checkpoint of another kind is refused by name.
SCHEME = "radiograph-clip"
#: The figures of the judge written to TensorBoard at each preview.
JUDGE_SCALARS = ("accuracy", "spearman_psnr", "spearman_ssim")


@dataclass
class PretrainResult:
    steps: int
    duration_s: float
    final_losses: dict[str, float]
    weights: Path
    card: Path
    held_out: JudgeReport | None = None
    real: JudgeReport | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_model(model_config: str) -> tuple[nn.Module, dict[str, Any]]:
    import open_clip

    _, cfg = read_model_config(model_config)
    return open_clip.CLIP(**cfg), cfg


def batch_members(step: int, cfg: PretrainConfig, parts: int) -> list[tuple[int, int]]:
    """(part, state) pairs of one step's batch; the label state is in every part's group."""
    rng = np.random.default_rng([cfg.run.seed, BATCH_STREAM, step])
    chosen = rng.choice(parts, size=min(cfg.optim.parts_per_batch, parts), replace=False)
    others = [k for k in range(len(STATES)) if k != STATE_INDEX["label"]]
    members = []
    for part in chosen:
        states = rng.choice(others, size=min(cfg.optim.states_per_part - 1, len(others)), replace=False)
        members += [(int(part), STATE_INDEX["label"])] + [(int(part), int(s)) for s in states]
    return members


def batch_views(
    data: CaptionedSet, members: list[tuple[int, int]], step: int, cfg: PretrainConfig, image_size: int
) -> Tensor:
    """(B, 1, S, S) views; the states of one part share one random crop (same view seed)."""
    view_cfg = DataConfig(crop_size=image_size, scale_min=cfg.data.scale_min, workers=0)
    views = []
    for part, state in members:
        rng = np.random.default_rng([cfg.run.seed, VIEW_STREAM, step, part])
        unit = data.frames[part, state].astype(np.float32) / 65535.0
        views.append(random_view(unit, rng, view_cfg))
    return torch.from_numpy(np.stack(views))[:, None]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def class_aware_contrastive(logits: Tensor, classes: Tensor) -> Tensor:
    """Both directions' cross-entropy, targets spread over every same-class pair."""
    same = (classes[:, None] == classes[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.t(), targets.t()))


def zero_shot_loss(image_features: Tensor, prompts: Tensor, scale: Tensor, well: Tensor) -> Tensor:
    """Cross-entropy between the bad (0) and well (1) prompts; ``well`` is 1, 0 or -1 (left out)."""
    known = well >= 0
    if not known.any():
        return image_features.new_zeros(())
    logits = scale * image_features[known] @ prompts.t()
    return F.cross_entropy(logits, well[known])


def ranking_loss(
    image_features: Tensor, prompts: Tensor, quality: Tensor, parts: Tensor, margin: float, min_gap: float
) -> Tensor:
    """Hinge on every same-part pair whose quality (PSNR, SSIM) differs by ``min_gap``: the better one
    scores higher by ``margin``."""
    score = image_features @ (prompts[1] - prompts[0])
    better = (parts[:, None] == parts[None, :]) & (quality[:, None] > quality[None, :] + min_gap)
    if not better.any():
        return image_features.new_zeros(())
    gaps = score[:, None] - score[None, :]
    return F.relu(margin - gaps[better]).mean()


def pretrain_losses(
    clip: nn.Module,
    views: Tensor,
    tokens: Tensor,
    prompt_tokens: Tensor,
    classes: Tensor,
    well: Tensor,
    psnr: Tensor,
    parts: Tensor,
    cfg: PretrainConfig,
    image_size: int,
    ssim: Tensor | None = None,
) -> dict[str, Tensor]:
    image_features = F.normalize(clip.encode_image(clip_input(views, image_size)), dim=-1)
    text_features = F.normalize(clip.encode_text(tokens), dim=-1)
    prompts = F.normalize(clip.encode_text(prompt_tokens), dim=-1)
    scale = clip.logit_scale.exp().clamp(max=100.0)
    w = cfg.loss
    losses = {
        "contrastive": class_aware_contrastive(scale * image_features @ text_features.t(), classes),
        "zero_shot": zero_shot_loss(image_features, prompts, scale, well),
        "rank": ranking_loss(image_features, prompts, psnr, parts, w.rank_margin, w.rank_min_db),
    }
    if w.rank_ssim_weight and ssim is not None:
        losses["rank_ssim"] = ranking_loss(image_features, prompts, ssim, parts, w.rank_margin, w.rank_min_ssim)
    losses["total"] = (
        losses["contrastive"]
        + w.zero_shot_weight * losses["zero_shot"]
        + w.rank_weight * losses["rank"]
        + w.rank_ssim_weight * losses.get("rank_ssim", losses["rank"].new_zeros(()))
    )
    return losses


class BatchMaker:
    """Tensors of one step's batch from the captioned set (tokenised captions cached)."""

    def __init__(self, data: CaptionedSet, cfg: PretrainConfig, image_size: int, context_length: int) -> None:
        from open_clip.tokenizer import tokenize

        from trainer.radiograph.data import BAD_PROMPT, WELL_PROMPT

        self.data, self.cfg, self.image_size = data, cfg, image_size
        self.tokens = tokenize([r.caption for r in data.renderings], context_length=context_length)
        self.prompt_tokens = tokenize([BAD_PROMPT, WELL_PROMPT], context_length=context_length)

    def __call__(self, step: int) -> dict[str, Tensor]:
        members = batch_members(step, self.cfg, self.data.frames.shape[0])
        index = [part * len(STATES) + state for part, state in members]
        records = [self.data.renderings[i] for i in index]
        return {
            "views": batch_views(self.data, members, step, self.cfg, self.image_size),
            "tokens": self.tokens[index],
            "prompt_tokens": self.prompt_tokens,
            "classes": torch.tensor([state for _, state in members]),
            "well": torch.tensor([-1 if r.well is None else int(r.well) for r in records]),
            "psnr": torch.tensor([r.psnr for r in records], dtype=torch.float32),
            "ssim": torch.tensor([r.ssim for r in records], dtype=torch.float32),
            "parts": torch.tensor([part for part, _ in members]),
        }


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    lr, warmup, steps = cfg.optim.lr, cfg.schedule.warmup_steps, cfg.schedule.steps
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return float(lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))))  # a float: weights_only loads it


def data_sha256(data: CaptionedSet) -> str:
    """Identifies a captioned set: its frames' bytes and its captions."""
    digest = hashlib.sha256(np.ascontiguousarray(data.frames).tobytes())
    for r in data.renderings:
        digest.update(f"{r.state}\t{r.caption}\t{r.psnr:.4f}\n".encode())
    return digest.hexdigest()


def batch_losses(clip: nn.Module, batch: dict[str, Tensor], cfg: PretrainConfig, image_size: int) -> dict[str, Tensor]:
    """:func:`pretrain_losses` on one batch as :class:`BatchMaker` makes it."""
    return pretrain_losses(
        clip,
        batch["views"],
        batch["tokens"],
        batch["prompt_tokens"],
        batch["classes"],
        batch["well"],
        batch["psnr"],
        batch["parts"],
        cfg,
        image_size,
        batch["ssim"],
    )


def optimise(
    clip: nn.Module,
    optim: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    cfg: PretrainConfig,
    lr: float,
    image_size: int,
) -> dict[str, Tensor]:
    """One step on one batch; the losses, detached."""
    for group in optim.param_groups:
        group["lr"] = lr
    losses = batch_losses(clip, batch, cfg, image_size)
    optim.zero_grad(set_to_none=True)
    losses["total"].backward()
    optim.step()
    return {k: v.detach() for k, v in losses.items()}


class PretrainRun(RunLoop):
    """One pretraining run: the CLIP, its optimiser, the captioned sets; :meth:`run` trains and exports.

    ``out`` is the output folder: the run folder (``checkpoint.pt``, ``tensorboard/``) and the
    export (:data:`WEIGHTS_NAME`, ``open_clip_config.json``, ``model_card.json``) alike.
    """

    def __init__(self, cfg: PretrainConfig, out: Path, *, resume: bool = False) -> None:
        super().__init__(Path(out) / WEIGHTS_NAME, Path(out), None)
        self.cfg = cfg
        seed_everything(cfg.run.seed)  # the same random initialisation in every run of this seed
        self.clip, self.model_cfg = build_model(cfg.model.config)
        if cfg.model.init:
            from safetensors.torch import load_file

            self.clip.load_state_dict(load_file(cfg.model.init))
        self.image_size = int(self.model_cfg["vision_cfg"]["image_size"])
        self.context_length = int(self.model_cfg["text_cfg"].get("context_length", 77))
        self.optim = torch.optim.AdamW(self.clip.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.history: list[dict[str, float]] = []
        self.judge_history: list[dict[str, float]] = []
        self.held_out_report: JudgeReport | None = None
        self.real_report: JudgeReport | None = None
        saved = self.read_checkpoint() if resume else None  # refused before minutes of data generation
        progress = cfg.run.progress
        self.data = make_captioned_set(cfg.run.seed, cfg.data.parts, cfg.data.size, held_out=False, progress=progress)
        self.held_out = make_captioned_set(
            cfg.run.seed, cfg.data.held_out_parts, cfg.data.size, held_out=True, progress=progress
        )
        self.batches = BatchMaker(self.data, cfg, self.image_size, self.context_length)
        if saved is not None:  # after the data: the RNG states continue from where the checkpoint left them
            self.load_checkpoint(saved)

    @property
    def settings(self) -> LoopSettings:
        return self.cfg.run

    @property
    def total_iters(self) -> int:
        return self.cfg.schedule.steps

    def _loader(self, start: int, end: int) -> Iterator[dict[str, Tensor]]:
        """Step ``k``'s batch for each step; ``run.minutes`` after the first one of this call, no more."""
        began = time.monotonic()
        minutes = self.cfg.run.minutes
        for step in range(start, end):
            if step > start and minutes is not None and time.monotonic() - began > minutes * 60:
                return
            yield self.batches(step)

    def _label(self) -> str:
        return "warm-up" if self.iteration < self.cfg.schedule.warmup_steps else "pretrain"

    def _train_one(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.clip.train()
        lr = learning_rate(self.iteration, self.cfg)
        losses = optimise(self.clip, self.optim, batch, self.cfg, lr, self.image_size)
        self.history.append({"step": self.iteration + 1, **{k: round(float(v), 5) for k, v in losses.items()}})
        return losses

    def preview(self, writer: SummaryWriter | None) -> Path | None:
        """The judge on the held-out parts, every ``run.judge_every`` steps (once per step); nothing is written."""
        every = self.cfg.run.judge_every
        done = bool(self.judge_history) and self.judge_history[-1]["step"] == self.iteration
        if not every or self.iteration % every or done:
            return None
        report, _ = judge_captioned(self.clip, self.held_out, self.image_size, self.context_length)
        self.judge_history.append({"step": self.iteration, **report.as_dict()})
        print(_report_line(f"held-out parts at step {self.iteration}", report), file=sys.stderr, flush=True)
        if writer is not None:
            for name in JUDGE_SCALARS:
                writer.add_scalar(f"judge/{name}", getattr(report, name), self.iteration)
        return None

    # -- checkpoints and export ---------------------------------------------------------
    def save_checkpoint(self, started: float) -> Path | None:
        state = {
            "scheme": SCHEME,
            "clip": None,  # no frozen CLIP: the CLIP is what this run trains
            "iteration": self.iteration,
            "model": self.clip.state_dict(),
            "optim": self.optim.state_dict(),
            "rng": rng_state(),
            "losses": self.loss_values(),
            "history": self.history,
            "judge_history": self.judge_history,
            "elapsed_s": self.elapsed_before + time.monotonic() - started,
            "config": training_identity(self.cfg),
        }
        return write_checkpoint(self.checkpoint_path, state)

    def read_checkpoint(self) -> dict[str, Any]:
        """The checkpoint to resume from, refused when it is missing, of another kind or of other settings."""
        state = read_checkpoint(self.checkpoint_path, None, scheme=SCHEME)
        if state["config"] != training_identity(self.cfg):
            raise TrainerError(
                f"--resume: {self.checkpoint_path} was made with other settings: {state['config']}; resume with "
                "those (only the [run] table's threads, minutes, judge_every, log_every, checkpoint_every and "
                "progress may change)"
            )
        return state

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (:meth:`read_checkpoint`) left off."""
        self.clip.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.losses = dict(state["losses"])
        self.history = list(state["history"])
        self.judge_history = list(state["judge_history"])
        self.elapsed_before = float(state["elapsed_s"])

    def export(self, duration: float) -> tuple[str, Path]:
        """Weights, open_clip config, the judge's figures and the model card; (weights sha256, card)."""
        card = export_run(self, duration)
        return file_sha256(self.out), card

    def result(self, duration: float, card: Path) -> PretrainResult:
        return PretrainResult(
            self.iteration,
            duration,
            mean_losses(self.history),
            self.out,
            card,
            self.held_out_report,
            self.real_report,
        )


def train(cfg: PretrainConfig, out: Path, resume: bool = False) -> PretrainResult:
    """Pretrain (judging the held-out set every ``run.judge_every`` steps), export, judge, write the card.

    A run stopped by ``run.minutes`` is exported as it stands; ``resume=True`` continues it.
    """
    out.mkdir(parents=True, exist_ok=True)
    run = PretrainRun(cfg, out, resume=resume)
    done = run.run()
    card = done.card if done.card is not None else run.export(done.duration_s)[1]  # stopped by run.minutes
    return run.result(done.duration_s, card)


def mean_losses(history: list[dict[str, float]], last: int = 50) -> dict[str, float]:
    tail = history[-last:]
    return {k: round(float(np.mean([h[k] for h in tail])), 5) for k in tail[0] if k != "step"} if tail else {}


def export_run(run: PretrainRun, duration: float) -> Path:
    """Weights, open_clip config, judge figures (kept on ``run``) and the model card; the card's path."""
    from safetensors.torch import save_file

    cfg, clip, model_cfg = run.cfg, run.clip, run.model_cfg
    data, held_out_set = run.data, run.held_out
    clip.eval()
    weights = run.out
    save_file({k: v.detach().contiguous() for k, v in clip.state_dict().items()}, str(weights))
    (weights.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=2) + "\n")
    run.held_out_report, run.real_report, judged = judge_all(clip, held_out_set, run.image_size, run.context_length)
    card = {
        "name": MODEL_NAME,
        "weights": {"path": str(weights.resolve()), "sha256": file_sha256(weights), "format": "open_clip state dict"},
        "model_config": {"path": cfg.model.config, "model_cfg": model_cfg},
        "use": f"python -m trainer --clip {cfg.model.config} --clip-weights {weights}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"),
        "data": {
            "generator": "drdaemon.physics via trainer.radiograph.data",
            "seed": cfg.run.seed,
            "train_subset": PRETRAIN_SET,
            "held_out_subset": HELD_OUT_SET,
            "held_out_rule": f"training parts clip < {HELD_OUT_CLIPPED_PERCENT} % of the part, held-out "
            f"parts >= {HELD_OUT_CLIPPED_PERCENT} %, from another seed subset",
            "parts": int(data.frames.shape[0]),
            "frames": len(data),
            "size": cfg.data.size,
            "states": [{"name": s.name, "grade": s.grade, "well": s.well} for s in STATES],
            "templates": list(TEMPLATES),
            "sha256": data_sha256(data),
            "held_out_parts": int(held_out_set.frames.shape[0]),
            "held_out_sha256": data_sha256(held_out_set),
        },
        "steps": run.iteration,
        "duration_s": round(duration, 1),
        "first_losses": run.history[0] if run.history else {},
        "final_losses": mean_losses(run.history),
        "logit_scale": round(float(clip.logit_scale.detach().exp()), 4),
        "judge": {**judged, "during_training": run.judge_history},
        "versions": package_versions(),
    }
    card_path = weights.parent / "model_card.json"
    card_path.write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    return card_path


def judge_all(
    clip: nn.Module, held_out_set: CaptionedSet, image_size: int, context_length: int
) -> tuple[JudgeReport, JudgeReport | None, dict[str, Any]]:
    """The judge on the held-out parts and on the real CR frames, and the card's record of both."""
    held_out, _ = judge_captioned(clip, held_out_set, image_size, context_length)
    paths = real_frame_paths()
    real, real_scores = judge_real(clip, paths, image_size, context_length) if paths else (None, {})
    record = {
        "held_out": held_out.as_dict(),
        "real_cr": real.as_dict() if real else None,
        "real_cr_scores": real_scores,
        "real_cr_frames": [p.name for p in paths],
        "targets": {"accuracy": 0.95, "spearman": 0.8},
    }
    return held_out, real, record


def rejudge(cfg: PretrainConfig, out: Path, progress: bool = True) -> tuple[JudgeReport, JudgeReport | None]:
    """Judge an exported checkpoint again (same settings) and update its card's judge record."""
    from safetensors.torch import load_file

    clip, model_cfg = build_model(cfg.model.config)
    clip.load_state_dict(load_file(str(out / WEIGHTS_NAME)))
    clip.eval()
    held_out_set = make_captioned_set(
        cfg.run.seed, cfg.data.held_out_parts, cfg.data.size, held_out=True, progress=progress
    )
    held_out, real, record = judge_all(
        clip,
        held_out_set,
        int(model_cfg["vision_cfg"]["image_size"]),
        int(model_cfg["text_cfg"].get("context_length", 77)),
    )
    card_path = out / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["judge"] = {**record, "during_training": card.get("judge", {}).get("during_training", [])}
    card_path.write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    return held_out, real


def _report_line(name: str, report: JudgeReport | None) -> str:
    if report is None:
        return f"judge {name}: not run (pydicom-data not installed)"
    return (
        f"judge {name}: {report.frames} frames of {report.parts} parts; zero-shot well vs badly exposed "
        f"{100 * report.accuracy:.1f} % (well {100 * report.accuracy_well:.1f} %, bad "
        f"{100 * report.accuracy_bad:.1f} %); per-part Spearman vs PSNR {report.spearman_psnr:.3f}, "
        f"vs SSIM {report.spearman_ssim:.3f} (without the reference rendering: {report.spearman_psnr_flawed:.3f}, "
        f"{report.spearman_ssim_flawed:.3f})"
    )


EPILOG = """\
examples:
  python -m trainer.pretrain_clip --out runs/rclip --frames 5400 --steps 1000 --minutes 40 --threads 1
  python -m trainer.pretrain_clip --out runs/rclip --config pretrain.toml --set loss.rank_margin=0.1
  python -m trainer.pretrain_clip --out runs/rclip --resume            # continue from OUT/checkpoint.pt
  python -m trainer.pretrain_clip --out runs/rclip --judge-only        # judge OUT's export again

Every key of the config file is documented in pretrain_clip.example.toml; each flag above sets one
of them and wins over the file (--frames: data.frames, --steps: schedule.steps, --lr: optim.lr, ...).
OUT holds the checkpoint, TensorBoard logs (tensorboard --logdir OUT/tensorboard), the open_clip
checkpoint and model_card.json. The trainer then loads it:
  python -m trainer --clip radiograph-clip --clip-weights OUT/open_clip_model.safetensors ...
"""


def build_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m trainer.pretrain_clip",
        description="Pretrain a small CLIP on radiographs made by the project's physics generator, captioned with "
        "their exposure state, part, defects and noise; write an open_clip checkpoint and a model card "
        "with the judge's figures (zero-shot accuracy, per-part rank correlation with PSNR/SSIM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, weights, card)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="pretraining config TOML; every key is documented in pretrain_clip.example.toml",
    )
    add_set_option(parser, "loss.rank_margin=0.1")
    parser.add_argument(
        "--frames",
        type=int,
        help=f"captioned training frames, {len(STATES)} states per part (default {d.data.frames}; data.frames)",
    )
    parser.add_argument("--size", type=int, help=f"generated frame side in pixels (default {d.data.size}; data.size)")
    parser.add_argument(
        "--seed", type=int, help=f"seed of data, initialisation and batches (default {d.run.seed}; run.seed)"
    )
    parser.add_argument("--steps", type=int, help=f"optimiser steps (default {d.schedule.steps}; schedule.steps)")
    parser.add_argument(
        "--model-config",
        help="open_clip model-config JSON or shipped name (default: the shipped radiograph-clip.json; model.config)",
    )
    parser.add_argument(
        "--held-out-parts",
        type=int,
        help=f"held-out parts the judge scores (default {d.data.held_out_parts}; data.held_out_parts)",
    )
    parser.add_argument(
        "--parts-per-batch",
        type=int,
        help=f"parts in a batch (default {d.optim.parts_per_batch}; optim.parts_per_batch)",
    )
    parser.add_argument(
        "--states-per-part",
        type=int,
        help=f"states of each part in a batch, the label among them (default {d.optim.states_per_part}; optim.states_per_part)",
    )
    parser.add_argument("--lr", type=float, help=f"AdamW learning rate (default {d.optim.lr}; optim.lr)")
    parser.add_argument(
        "--rank-weight",
        type=float,
        help=f"weight of the within-part ranking term (0 leaves it out; default {d.loss.rank_weight}; loss.rank_weight)",
    )
    parser.add_argument(
        "--rank-ssim-weight",
        type=float,
        help="weight of the within-part ranking term on SSIM against the label "
        f"(default {d.loss.rank_ssim_weight}; loss.rank_ssim_weight)",
    )
    parser.add_argument(
        "--init",
        metavar="SAFETENSORS",
        help="start from this open_clip state dict (e.g. an earlier run's open_clip_model.safetensors; model.init)",
    )
    parser.add_argument(
        "--zero-shot-weight",
        type=float,
        help="weight of the zero-shot prompt term (0 leaves it out; "
        f"default {d.loss.zero_shot_weight}; loss.zero_shot_weight)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="stop (checkpointed, exported and judged) after this many minutes of training (run.minutes)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (same settings)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; run.threads)")
    parser.add_argument(
        "--judge-every",
        type=int,
        help="judge the held-out parts every N steps, printed and kept in the card "
        "(default 0: at the end only; run.judge_every)",
    )
    parser.add_argument(
        "--log-every",
        type=int,
        help=f"steps between log lines without a progress bar (default {d.run.log_every}; run.log_every)",
    )
    parser.add_argument(
        "--judge-only",
        action="store_true",
        help="do not train: judge OUT's exported checkpoint again and update its card",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (run.progress = false)")
    return parser


def overrides_from(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, then each flag given as the override of its key (so the flags win)."""
    extra = list(args.overrides)
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            extra.append(override(key, value))
    if args.no_progress:
        extra.append(override("run.progress", False))
    return extra


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_pretrain_config(args.config, overrides_from(args))
    except TrainConfigError as exc:
        print(f"pretrain_clip: {exc}", file=sys.stderr)
        return 2
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if args.judge_only:
        held_out, real = rejudge(cfg, args.out, progress=cfg.run.progress)
        print(_report_line("held-out parts", held_out))
        print(_report_line("real CR frames", real))
        return 0
    try:
        result = train(cfg, args.out, resume=args.resume)
    except TrainerError as exc:
        print(f"pretrain_clip: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pretrain_clip: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    print(f"pretrain_clip: {result.steps} steps in {result.duration_s:.0f} s; final losses {result.final_losses}")
    print(_report_line("held-out parts", result.held_out))
    print(_report_line("real CR frames", result.real))
    print(f"wrote {result.weights} and {result.card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
