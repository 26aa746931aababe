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

Each batch is a pure function of (seed, step), so ``--resume`` continues exactly. The result
is an open_clip checkpoint (``open_clip_model.safetensors`` plus ``open_clip_config.json``, so
``local-dir:DIR`` works too) and ``model_card.json`` with the data recipe, the losses and the
judge's figures (:mod:`trainer.radiograph.judge`) on held-out parts and on real CR frames. The
trainer loads it with ``--clip trainer/model_configs/radiograph-clip.json --clip-weights
DIR/open_clip_model.safetensors``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from drdaemon.io.durable import file_sha256
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
from trainer.shared.clip_weights import read_model_config
from trainer.shared.config import DataConfig
from trainer.shared.data import random_view
from trainer.shared.export import package_versions

DEFAULT_CONFIG = Path(__file__).parents[1] / "model_configs" / "radiograph-clip.json"
CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "open_clip_model.safetensors"
BATCH_STREAM, VIEW_STREAM = 11, 12
MODEL_NAME = "radiograph-clip"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run depends on (stored in the checkpoint and the card)."""

    model_config: str = str(DEFAULT_CONFIG)
    frames: int = 5400  # captioned training frames: parts x len(STATES)
    size: int = 256  # generator frame side, pixels
    held_out_parts: int = 40
    seed: int = 0
    steps: int = 2000
    parts_per_batch: int = 8
    states_per_part: int = 6
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    zero_shot_weight: float = 1.0
    rank_weight: float = 1.0
    rank_margin: float = 0.05
    rank_min_db: float = 1.0
    rank_ssim_weight: float = 0.0
    rank_min_ssim: float = 0.02
    init: str | None = None  # open_clip state dict to start from (fine-tuning), else random
    scale_min: float = 0.5  # smallest crop, share of the frame's short side (as the trainer's data)

    @property
    def parts(self) -> int:
        return max(1, self.frames // len(STATES))


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
    rng = np.random.default_rng([cfg.seed, BATCH_STREAM, step])
    chosen = rng.choice(parts, size=min(cfg.parts_per_batch, parts), replace=False)
    others = [k for k in range(len(STATES)) if k != STATE_INDEX["label"]]
    members = []
    for part in chosen:
        states = rng.choice(others, size=min(cfg.states_per_part - 1, len(others)), replace=False)
        members += [(int(part), STATE_INDEX["label"])] + [(int(part), int(s)) for s in states]
    return members


def batch_views(
    data: CaptionedSet, members: list[tuple[int, int]], step: int, cfg: PretrainConfig, image_size: int
) -> Tensor:
    """(B, 1, S, S) views; the states of one part share one random crop (same view seed)."""
    view_cfg = DataConfig(crop_size=image_size, scale_min=cfg.scale_min, workers=0)
    views = []
    for part, state in members:
        rng = np.random.default_rng([cfg.seed, VIEW_STREAM, step, part])
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
    losses = {
        "contrastive": class_aware_contrastive(scale * image_features @ text_features.t(), classes),
        "zero_shot": zero_shot_loss(image_features, prompts, scale, well),
        "rank": ranking_loss(image_features, prompts, psnr, parts, cfg.rank_margin, cfg.rank_min_db),
    }
    if cfg.rank_ssim_weight and ssim is not None:
        losses["rank_ssim"] = ranking_loss(image_features, prompts, ssim, parts, cfg.rank_margin, cfg.rank_min_ssim)
    losses["total"] = (
        losses["contrastive"]
        + cfg.zero_shot_weight * losses["zero_shot"]
        + cfg.rank_weight * losses["rank"]
        + cfg.rank_ssim_weight * losses.get("rank_ssim", losses["rank"].new_zeros(()))
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
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0))))


def data_sha256(data: CaptionedSet) -> str:
    """Identifies a captioned set: its frames' bytes and its captions."""
    digest = hashlib.sha256(np.ascontiguousarray(data.frames).tobytes())
    for r in data.renderings:
        digest.update(f"{r.state}\t{r.caption}\t{r.psnr:.4f}\n".encode())
    return digest.hexdigest()


@dataclass
class RunState:
    """What a checkpoint restores besides the weights: where the run is and what it measured."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    judge_history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0


def save_checkpoint(
    path: Path, clip: nn.Module, optim: torch.optim.Optimizer, cfg: PretrainConfig, run: RunState
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"clip": clip.state_dict(), "optim": optim.state_dict(), "config": asdict(cfg), **asdict(run)}, tmp)
    tmp.replace(path)


def restore(path: Path, clip: nn.Module, optim: torch.optim.Optimizer, cfg: PretrainConfig) -> RunState:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["config"] != asdict(cfg):
        raise ValueError(f"--resume: {path} was made with another config: {state['config']}")
    clip.load_state_dict(state["clip"])
    optim.load_state_dict(state["optim"])
    return RunState(state["step"], state["history"], state.get("judge_history", []), state["elapsed"])


def optimise(
    clip: nn.Module,
    optim: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    cfg: PretrainConfig,
    lr: float,
    image_size: int,
) -> dict[str, float]:
    """One step on one batch; the losses as floats."""
    for group in optim.param_groups:
        group["lr"] = lr
    losses = pretrain_losses(
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
    optim.zero_grad(set_to_none=True)
    losses["total"].backward()
    optim.step()
    return {k: round(float(v.detach()), 5) for k, v in losses.items()}


def train(
    cfg: PretrainConfig,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 25,
    checkpoint_every: int = 100,
    minutes: float | None = None,
    judge_every: int = 0,
) -> PretrainResult:
    """Pretrain (judging the held-out set every ``judge_every`` steps), export, judge, write the card."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    clip, model_cfg = build_model(cfg.model_config)
    if cfg.init:
        from safetensors.torch import load_file

        clip.load_state_dict(load_file(cfg.init))
    image_size = int(model_cfg["vision_cfg"]["image_size"])
    context_length = int(model_cfg["text_cfg"].get("context_length", 77))
    optim = torch.optim.AdamW(clip.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    checkpoint = out / CHECKPOINT_NAME
    run = restore(checkpoint, clip, optim, cfg) if resume else RunState()
    data = make_captioned_set(cfg.seed, cfg.parts, cfg.size, held_out=False, progress=progress)
    held_out = make_captioned_set(cfg.seed, cfg.held_out_parts, cfg.size, held_out=True, progress=progress)
    batches = BatchMaker(data, cfg, image_size, context_length)
    started = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=run.step, desc="pretrain", unit="step", disable=not progress)
    clip.train()
    while run.step < cfg.steps:
        losses = optimise(clip, optim, batches(run.step), cfg, learning_rate(run.step, cfg), image_size)
        run.step += 1
        run.history.append({"step": run.step, **losses})
        bar.update()
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
        if not progress and (run.step % log_every == 0 or run.step == cfg.steps):
            print(
                "pretrain " + " ".join(f"{k}={v}" for k, v in losses.items()) + f" step={run.step}/{cfg.steps}",
                flush=True,
            )
        if judge_every and run.step % judge_every == 0:
            report, _ = judge_captioned(clip, held_out, image_size, context_length)
            run.judge_history.append({"step": run.step, **report.as_dict()})
            tqdm.write(_report_line(f"held-out parts at step {run.step}", report))
        out_of_time = minutes is not None and time.perf_counter() - started > minutes * 60
        if run.step % checkpoint_every == 0 or run.step == cfg.steps or out_of_time:
            run.elapsed += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint(checkpoint, clip, optim, cfg, run)
        if out_of_time:
            break
    bar.close()
    run.elapsed += time.perf_counter() - started
    return export(clip, model_cfg, cfg, out, data, held_out, run, image_size, context_length)


def mean_losses(history: list[dict[str, float]], last: int = 50) -> dict[str, float]:
    tail = history[-last:]
    return {k: round(float(np.mean([h[k] for h in tail])), 5) for k in tail[0] if k != "step"} if tail else {}


def export(
    clip: nn.Module,
    model_cfg: dict[str, Any],
    cfg: PretrainConfig,
    out: Path,
    data: CaptionedSet,
    held_out_set: CaptionedSet,
    run: RunState,
    image_size: int,
    context_length: int,
) -> PretrainResult:
    """Weights, open_clip config, judge figures and the model card."""
    from safetensors.torch import save_file

    clip.eval()
    weights = out / WEIGHTS_NAME
    save_file({k: v.detach().contiguous() for k, v in clip.state_dict().items()}, str(weights))
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=2) + "\n")
    held_out, real, judged = judge_all(clip, held_out_set, image_size, context_length)
    card = {
        "name": MODEL_NAME,
        "weights": {"path": str(weights.resolve()), "sha256": file_sha256(weights), "format": "open_clip state dict"},
        "model_config": {"path": cfg.model_config, "model_cfg": model_cfg},
        "use": f"python -m trainer --clip {cfg.model_config} --clip-weights {weights}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "data": {
            "generator": "drdaemon.physics via trainer.radiograph.data",
            "seed": cfg.seed,
            "train_subset": PRETRAIN_SET,
            "held_out_subset": HELD_OUT_SET,
            "held_out_rule": f"training parts clip < {HELD_OUT_CLIPPED_PERCENT} % of the part, held-out "
            f"parts >= {HELD_OUT_CLIPPED_PERCENT} %, from another seed subset",
            "parts": int(data.frames.shape[0]),
            "frames": len(data),
            "size": cfg.size,
            "states": [{"name": s.name, "grade": s.grade, "well": s.well} for s in STATES],
            "templates": list(TEMPLATES),
            "sha256": data_sha256(data),
            "held_out_parts": int(held_out_set.frames.shape[0]),
            "held_out_sha256": data_sha256(held_out_set),
        },
        "steps": run.step,
        "duration_s": round(run.elapsed, 1),
        "first_losses": run.history[0] if run.history else {},
        "final_losses": mean_losses(run.history),
        "logit_scale": round(float(clip.logit_scale.detach().exp()), 4),
        "judge": {**judged, "during_training": run.judge_history},
        "versions": package_versions(),
    }
    card_path = out / "model_card.json"
    card_path.write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    return PretrainResult(run.step, run.elapsed, mean_losses(run.history), weights, card_path, held_out, real)


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

    clip, model_cfg = build_model(cfg.model_config)
    clip.load_state_dict(load_file(str(out / WEIGHTS_NAME)))
    clip.eval()
    held_out_set = make_captioned_set(cfg.seed, cfg.held_out_parts, cfg.size, held_out=True, progress=progress)
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


def build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m trainer.pretrain_clip",
        description="Pretrain a small CLIP on radiographs made by the project's physics generator, captioned with "
        "their exposure state, part, defects and noise; write an open_clip checkpoint and a model card "
        "with the judge's figures (zero-shot accuracy, per-part rank correlation with PSNR/SSIM).",
        epilog="The trainer then loads it: python -m trainer --clip trainer/model_configs/radiograph-clip.json "
        "--clip-weights DIR/open_clip_model.safetensors ...",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, weights, card)")
    parser.add_argument(
        "--frames",
        type=int,
        default=defaults.frames,
        help=f"captioned training frames, {len(STATES)} states per part (default {defaults.frames})",
    )
    parser.add_argument("--size", type=int, default=defaults.size, help="generated frame side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimiser steps (default {defaults.steps})")
    parser.add_argument(
        "--model-config",
        default=defaults.model_config,
        help="open_clip model-config JSON (default: the shipped radiograph-clip.json)",
    )
    parser.add_argument("--held-out-parts", type=int, default=defaults.held_out_parts)
    parser.add_argument("--parts-per-batch", type=int, default=defaults.parts_per_batch)
    parser.add_argument("--states-per-part", type=int, default=defaults.states_per_part)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument(
        "--rank-weight",
        type=float,
        default=defaults.rank_weight,
        help="weight of the within-part ranking term (0 leaves it out)",
    )
    parser.add_argument(
        "--rank-ssim-weight",
        type=float,
        default=defaults.rank_ssim_weight,
        help="weight of the within-part ranking term on SSIM against the label (default 0)",
    )
    parser.add_argument(
        "--init",
        default=None,
        metavar="SAFETENSORS",
        help="start from this open_clip state dict (e.g. an earlier run's open_clip_model.safetensors)",
    )
    parser.add_argument(
        "--zero-shot-weight",
        type=float,
        default=defaults.zero_shot_weight,
        help="weight of the zero-shot prompt term (0 leaves it out)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop (checkpointed, exported and judged) after this many minutes of training",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (same settings)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--judge-every",
        type=int,
        default=0,
        help="judge the held-out parts every N steps, printed and kept in the card (default 0: at the end only)",
    )
    parser.add_argument("--log-every", type=int, default=25, help="steps between log lines without a progress bar")
    parser.add_argument(
        "--judge-only",
        action="store_true",
        help="do not train: judge OUT's exported checkpoint again and update its card",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < len(STATES) or args.size < 64 or args.steps < 1:
        print(f"pretrain_clip: need --frames >= {len(STATES)}, --size >= 64 and --steps >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(
        model_config=args.model_config,
        frames=args.frames,
        size=args.size,
        held_out_parts=args.held_out_parts,
        seed=args.seed,
        steps=args.steps,
        parts_per_batch=args.parts_per_batch,
        states_per_part=args.states_per_part,
        lr=args.lr,
        rank_weight=args.rank_weight,
        zero_shot_weight=args.zero_shot_weight,
        rank_ssim_weight=args.rank_ssim_weight,
        init=args.init,
    )
    if args.judge_only:
        held_out, real = rejudge(cfg, args.out, progress=not args.no_progress)
        print(_report_line("held-out parts", held_out))
        print(_report_line("real CR frames", real))
        return 0
    try:
        result = train(
            cfg,
            args.out,
            resume=args.resume,
            progress=not args.no_progress,
            log_every=args.log_every,
            minutes=args.minutes,
            judge_every=args.judge_every,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"pretrain_clip: {exc}", file=sys.stderr)
        return 2
    print(f"pretrain_clip: {result.steps} steps in {result.duration_s:.0f} s; final losses {result.final_losses}")
    print(_report_line("held-out parts", result.held_out))
    print(_report_line("real CR frames", result.real))
    print(f"wrote {result.weights} and {result.card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
