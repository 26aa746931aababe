"""The staged training run: prompt initialisation, warm-up, enhancer training, stage-2 alternation.

One :class:`Trainer` owns the frozen CLIP, the enhancer, the prompt pair, their Adam
optimisers and the iteration counter; :func:`trainer.schedule.phase_at` says which step the
next iteration runs. What a step trains:

* ``prompt_init``: only the prompts, classification loss on abnormal vs normal samples.
* ``warmup``: only the enhancer, ``beta * L_identity + omega * L_CLAHE`` (warm-up weights).
* ``enhance`` (stage 1, and each stage-2 round): only the enhancer,
  ``L_CLIP + beta * L_identity + omega * L_CLAHE``; the text features are computed once
  after each prompt update and reused for every image.
* ``prompt_rank`` round r: only the prompts, ranking loss on abnormal, normal and enhanced
  samples, the enhancer frozen. Round 1 uses L_prompt1; later rounds use L_prompt2, whose
  I_{t-1} is produced by a frozen copy of the enhancer as it was at the start of the
  previous round (0.28 M parameters: cheaper and exact compared with storing images).

Exact resume: the checkpoint (:mod:`trainer.checkpoint`) holds both learners, both optimisers, the grad scalers, the
iteration, the RNG states, the last two enhancer snapshots (for I_{t-1}) and the losses.
The data order is a function of the seed and the iteration (see :mod:`trainer.data`), so a
run interrupted and resumed sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from drdaemon.model.network import Enhancer, EnhancerSpec
from trainer import losses as L
from trainer.checkpoint import CHECKPOINT_NAME, read_checkpoint, rng_state, set_rng_state, write_checkpoint
from trainer.clip_backbone import ClipBackbone, load_backbone
from trainer.config import TrainConfig
from trainer.data import (
    IterationBatches,
    TrainingSamples,
    clahe_prior,
    folder_summary,
    list_frames,
    make_loader,
    preview_samples,
)
from trainer.distributed import DistContext, pick_device
from trainer.export import export_weights
from trainer.preview import preview_grid, write_preview
from trainer.prompts import PromptPair
from trainer.runtime import StopRequest, amp_dtype, configure_determinism, seed_everything
from trainer.schedule import Phase, PhaseKind, phase_at

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


def default_run_dir(out: Path) -> Path:
    """``runs/demo/weights.safetensors`` -> ``runs/demo/weights.run``."""
    return out.parent / f"{out.stem}.run"


def start_near_identity(enhancer: Enhancer, weight_scale: float = 0.1) -> Enhancer:
    """Initialise the illumination head so that L is about 1 and the first output is the input.

    With PyTorch's default initialisation the head's final ReLU gives L close to 0 on much of
    the frame, so ``x / (L + eps)`` saturates, the clamp to [0, 1] passes no gradient and the
    enhancer never starts learning. A bias of 1 on the last convolution (its weights scaled
    down) starts from the identity, which the self-reconstruction warm-up then refines.
    """
    head = enhancer.head.conv
    with torch.no_grad():
        head.weight.mul_(weight_scale)
        if head.bias is not None:
            head.bias.fill_(1.0)
    return enhancer


def score_temperature(setting: float | str, backbone: ClipBackbone) -> float:
    """``clip.logit_scale``: a number as given, or ``"model"`` for the CLIP's own temperature."""
    return backbone.own_temperature() if setting == "model" else float(setting)


def log_line(iteration: int, total: int, phase: str, values: Mapping[str, float]) -> str:
    """One line of losses for runs without a progress bar (no TTY, or ``run.progress = false``)."""
    losses = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    return f"trainer: it {iteration}/{total} [{phase}] {losses}"


def score_saturated(clip_loss: float, tolerance: float = 1e-3) -> bool:
    """L_CLIP at 0 or 1 to within ``tolerance``: the softmax is flat and passes no gradient."""
    return clip_loss < tolerance or clip_loss > 1.0 - tolerance


def clone_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Trainer:
    """Everything a run holds; :meth:`run` trains up to an iteration and exports at the end."""

    def __init__(
        self,
        cfg: TrainConfig,
        abnormal: Path,
        normal: Path,
        out: Path,
        *,
        resume: bool = False,
        ctx: DistContext | None = None,
    ) -> None:
        self.cfg, self.out, self.ctx = cfg, Path(out), ctx or DistContext()
        self.device = pick_device(cfg.run.device, self.ctx)
        self.run_dir = Path(cfg.run.run_dir) if cfg.run.run_dir else default_run_dir(self.out)
        self.abnormal_files, self.normal_files = list_frames(abnormal), list_frames(normal)
        self.data_summary = {
            "abnormal": folder_summary(abnormal, self.abnormal_files),
            "normal": folder_summary(normal, self.normal_files),
        }
        configure_determinism(cfg.run.deterministic)
        seed_everything(cfg.run.seed)  # a randomly initialised CLIP is the same in every process
        self.backbone: ClipBackbone = load_backbone(cfg.clip.model, cfg.clip.weights, cfg.clip.cache_dir).to(
            self.device
        )
        torch.manual_seed(cfg.run.seed + 1)
        self.enhancer = start_near_identity(
            Enhancer(EnhancerSpec(in_ch=cfg.enhancer.in_ch, illumination_scale=cfg.enhancer.illumination_scale))
        ).to(self.device)
        self.prompts = PromptPair(self.backbone, cfg.prompts.n_tokens, cfg.prompts.init_std).to(self.device)
        self.logit_scale = score_temperature(cfg.clip.logit_scale, self.backbone)
        self.feature_size = self.backbone.image_size if cfg.clip.feature_size == "model" else None
        self.previous_enhancer = copy.deepcopy(self.enhancer).requires_grad_(False).eval()
        self.snapshots: dict[str, dict[str, Tensor] | None] = {"latest": None, "previous": None}
        o = cfg.optim
        self.enhancer_optim = torch.optim.Adam(
            self.enhancer.parameters(), lr=o.enhancer_lr, betas=o.betas, weight_decay=o.weight_decay
        )
        self.prompt_optim = torch.optim.Adam(
            self.prompts.parameters(), lr=o.prompt_lr, betas=o.betas, weight_decay=o.weight_decay
        )
        self.amp_dtype = amp_dtype(cfg.run.precision, self.device)
        fp16 = self.amp_dtype == torch.float16
        self.enhancer_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.prompt_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.iteration = 0
        self.elapsed_before = 0.0
        self.losses: Mapping[str, Tensor | float] = {}
        self.text_features: Tensor | None = None
        self.score_history: list[dict[str, Any]] = []
        self.show_bar = False
        self.preview_inputs: tuple[Tensor, Tensor] | None = None
        if resume:
            self.load_checkpoint()
        self.enhancer_ddp, self.prompts_ddp = self._wrap(self.enhancer), self._wrap(self.prompts)

    # -- setup -------------------------------------------------------------------------
    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.ctx.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loader(self, start: int, end: int) -> DataLoader[dict[str, Tensor]]:
        """One loader for iterations ``start .. end-1``; each batch's content follows its phase."""
        o, schedule = self.cfg.optim, self.cfg.schedule
        sizes = [
            o.prompt_batch if phase_at(i, schedule).trains_prompts else o.enhancer_batch for i in range(start, end)
        ]
        samples = TrainingSamples(self.abnormal_files, self.normal_files, self.cfg.data, self.cfg.run.seed, schedule)
        batches = IterationBatches(start, sizes, self.ctx.rank, self.ctx.world)
        return make_loader(samples, batches, self.cfg.data.workers, pin_memory=self.device.type == "cuda")

    # -- steps -------------------------------------------------------------------------
    def _optimise(
        self, loss: Tensor, optim: torch.optim.Optimizer, scaler: torch.amp.GradScaler, module: nn.Module
    ) -> None:
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip > 0:
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.optim.grad_clip)
        scaler.step(optim)
        scaler.update()

    def _current_text_features(self) -> Tensor:
        """The prompt pair's text features, computed once after each prompt update."""
        if self.text_features is None:
            with torch.no_grad(), self._autocast():
                self.text_features = self.prompts(self.backbone).float()
        return self.text_features

    def _prompt_step(self, loss: Tensor) -> None:
        self._optimise(loss, self.prompt_optim, self.prompt_scaler, self.prompts)
        self.text_features = None

    def step_prompt_init(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        abnormal, normal = batch["abnormal"], batch["normal"]
        with torch.no_grad(), self._autocast():
            images = self.backbone.image_features(torch.cat([abnormal, normal]))
        with self._autocast():
            text = self.prompts_ddp(self.backbone)
        logits = L.pair_logits(images, text, self.logit_scale)
        n = len(abnormal)
        loss = L.prompt_init_loss(logits[:n], logits[n:], self.cfg.loss.prompt_init_confidence)
        self._prompt_step(loss)
        scores = L.negative_score(logits.detach())
        return {"prompt_init": loss.detach(), "score_abnormal": scores[:n].mean(), "score_normal": scores[n:].mean()}

    def step_prompt_rank(self, batch: dict[str, Tensor], phase: Phase) -> dict[str, Tensor]:
        abnormal, normal = batch["abnormal"], batch["normal"]
        later = phase.round >= 2
        with torch.no_grad(), self._autocast():
            stack = [abnormal, normal, self.enhancer(abnormal)]
            if later:
                stack.append(self.previous_enhancer(abnormal))
            images = self.backbone.image_features(torch.cat(stack))
        with self._autocast():
            text = self.prompts_ddp(self.backbone)
        scores = L.negative_score(L.pair_logits(images, text, self.logit_scale)).split(len(abnormal))
        m = self.cfg.loss
        if later:
            loss = L.ranking_loss_later(scores[1], scores[0], scores[2], scores[3], m.m0, m.m1, m.m2)
        else:
            loss = L.ranking_loss_first(scores[1], scores[0], scores[2], m.m0, m.m1)
        self._prompt_step(loss)
        return {
            "prompt_rank": loss.detach(),
            "score_abnormal": scores[0].mean().detach(),
            "score_normal": scores[1].mean().detach(),
            "score_output": scores[2].mean().detach(),
        }

    def step_enhance(self, batch: dict[str, Tensor], warmup: bool) -> dict[str, Tensor]:
        abnormal, prior = batch["abnormal"], batch["clahe"]
        w = self.cfg.loss
        alpha, gamma = (w.warmup_alpha, w.warmup_gamma) if warmup else (w.alpha, w.gamma)
        levels = L.deepest_level(alpha, gamma)
        text = None if warmup else self._current_text_features()
        with torch.no_grad(), self._autocast():
            targets = [
                m.split(len(abnormal))
                for m in self.backbone.feature_maps(torch.cat([abnormal, prior]), levels, self.feature_size)
            ]
        inputs = [t[0] for t in targets]
        energies = L.feature_energy(inputs) if w.feature_norm == "input" else None
        with self._autocast():
            output = self.enhancer_ddp(abnormal)
            maps = self.backbone.feature_maps(output, levels, self.feature_size)
            identity = L.feature_loss(maps, inputs, alpha, energies)
            clahe = L.feature_loss(maps, [t[1] for t in targets], gamma, energies)
            loss = w.beta * identity + w.omega * clahe
            parts = {"identity": identity.detach(), "clahe": clahe.detach()}
            if text is not None:
                score = L.negative_score(L.pair_logits(self.backbone.image_features(output), text, self.logit_scale))
                clip = L.clip_loss(score)
                loss = loss + clip
                parts["clip"] = clip.detach()
                parts["score_output"] = clip.detach()  # L_CLIP is the outputs' mean score
        self._optimise(loss, self.enhancer_optim, self.enhancer_scaler, self.enhancer)
        return {("warmup" if warmup else "enhance"): loss.detach(), **parts}

    def step(self, phase: Phase, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if phase.kind is PhaseKind.PROMPT_INIT:
            return self.step_prompt_init(batch)
        if phase.kind is PhaseKind.PROMPT_RANK:
            return self.step_prompt_rank(batch, phase)
        return self.step_enhance(batch, warmup=phase.kind is PhaseKind.WARMUP)

    def enter_prompt_round(self, phase: Phase) -> None:
        """Snapshot the enhancer at a round's start; the one before gives I_{t-1} from round 2 on."""
        self.snapshots["previous"] = self.snapshots["latest"]
        self.snapshots["latest"] = clone_state(self.enhancer)
        if self.snapshots["previous"] is not None:
            self.previous_enhancer.load_state_dict(self.snapshots["previous"])

    # -- the run -------------------------------------------------------------------------
    def run(self, until: int | None = None) -> TrainResult:
        """Train up to iteration ``until`` (default: the whole schedule), checkpoint, export when done."""
        total = self.cfg.schedule.total_iters
        end = min(until if until is not None else total, total)
        started = time.monotonic()
        main = self.ctx.is_main
        self.show_bar = main and self.cfg.run.progress and sys.stderr.isatty()
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
                phase = phase_at(self.iteration, self.cfg.schedule)
                if phase.kind is PhaseKind.PROMPT_RANK and self.iteration == phase.start:
                    self.enter_prompt_round(phase)
                if phase.label != label:
                    label = phase.label
                    bar.set_description(label)
                self.losses = self.step(phase, batch)
                self.iteration += 1
                self._after_step(bar, writer, started, phase)
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

    def _after_step(self, bar: tqdm, writer: SummaryWriter | None, started: float, phase: Phase) -> None:
        it, r = self.iteration, self.cfg.run
        bar.update(1)
        if it % r.log_every == 0 or it == self.cfg.schedule.total_iters:
            values = self.loss_values()
            self.record_scores(phase, values)
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            if self.ctx.is_main and not self.show_bar:
                print(log_line(it, self.cfg.schedule.total_iters, phase.label, values), file=sys.stderr, flush=True)
            if self.ctx.is_main and "clip" in values and score_saturated(values["clip"]):
                tqdm.write(
                    f"trainer: warning: L_CLIP = {values['clip']:.3g} at iteration {it}: the score is saturated "
                    "and gives the enhancer no gradient (see loss.prompt_init_confidence and clip.logit_scale)",
                    file=sys.stderr,
                )
            if writer is not None:
                for name, value in values.items():
                    writer.add_scalar(f"loss/{name}", value, it)
        if it % r.preview_every == 0 and self.ctx.is_main:
            self.preview(writer)
        if it % r.checkpoint_every == 0:
            self.save_checkpoint(started)

    def loss_values(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.losses.items()}

    def record_scores(self, phase: Phase, values: Mapping[str, float]) -> None:
        """Keep the batch-mean scores of this log point for the model card's ``score_history``."""
        scores = {k: round(v, 6) for k, v in values.items() if k.startswith("score_")}
        if scores:
            self.score_history.append({"iteration": self.iteration, "phase": phase.label, **scores})

    def _writer(self) -> SummaryWriter:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def preview(self, writer: SummaryWriter | None) -> Path:
        """Write the before/after grid of the fixed preview frames for the current iteration."""
        if self.preview_inputs is None:
            inputs = preview_samples(self.abnormal_files, self.cfg.data)
            prior = torch.stack([torch.from_numpy(clahe_prior(x[0].numpy(), self.cfg.data))[None] for x in inputs])
            self.preview_inputs = (inputs, prior)
        inputs, prior = self.preview_inputs
        with torch.no_grad():
            outputs = self.enhancer(inputs.to(self.device)).float().cpu()
        grid = preview_grid(inputs, prior, outputs)
        if writer is not None:
            writer.add_image("preview/input|clahe|output", grid, self.iteration, dataformats="HW")
        return write_preview(self.run_dir / "previews", self.iteration, grid)

    # -- checkpoints and export ---------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def _clip_identity(self) -> dict[str, Any]:
        s = self.backbone.source
        return {"model": s.model, "weights": s.weights, "checkpoint_sha256": s.checkpoint_sha256}

    def save_checkpoint(self, started: float) -> Path | None:
        if not self.ctx.is_main:
            return None
        state = {
            "iteration": self.iteration,
            "enhancer": self.enhancer.state_dict(),
            "prompts": self.prompts.state_dict(),
            "enhancer_optim": self.enhancer_optim.state_dict(),
            "prompt_optim": self.prompt_optim.state_dict(),
            "enhancer_scaler": self.enhancer_scaler.state_dict(),
            "prompt_scaler": self.prompt_scaler.state_dict(),
            "snapshots": self.snapshots,
            "rng": rng_state(),
            "losses": self.loss_values(),
            "score_history": self.score_history,
            "elapsed_s": self.elapsed_before + time.monotonic() - started,
            "clip": self._clip_identity(),
            "config": self.cfg.model_dump(mode="json"),
        }
        return write_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> None:
        state = read_checkpoint(self.checkpoint_path, self._clip_identity())
        self.enhancer.load_state_dict(state["enhancer"])
        self.prompts.load_state_dict(state["prompts"])
        self.enhancer_optim.load_state_dict(state["enhancer_optim"])
        self.prompt_optim.load_state_dict(state["prompt_optim"])
        self.enhancer_scaler.load_state_dict(state["enhancer_scaler"])
        self.prompt_scaler.load_state_dict(state["prompt_scaler"])
        self.snapshots = state["snapshots"]
        if self.snapshots["previous"] is not None:
            self.previous_enhancer.load_state_dict(self.snapshots["previous"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.losses = dict(state["losses"])
        self.score_history = list(state.get("score_history", []))
        self.elapsed_before = float(state["elapsed_s"])

    def export(self, duration: float) -> tuple[str, Path]:
        return export_weights(
            self.out,
            copy.deepcopy(self.enhancer).cpu(),
            config=self.cfg.model_dump(mode="json"),
            data=self.data_summary,
            clip=self.backbone.source,
            final_losses=self.loss_values(),
            iterations=self.iteration,
            duration_s=duration,
            extra={
                "run": {
                    "seed": self.cfg.run.seed,
                    "world_size": self.ctx.world,
                    "device": str(self.device),
                    "precision": str(self.amp_dtype or torch.float32),
                    "run_dir": str(self.run_dir),
                },
                "score": {
                    "logit_scale": self.logit_scale,
                    "feature_size": list(self.feature_size) if self.feature_size else "train",
                    "feature_norm": self.cfg.loss.feature_norm,
                    "prompt_init_confidence": self.cfg.loss.prompt_init_confidence,
                    "history": self.score_history,
                },
            },
        )
