"""The staged training run: prompt initialisation, warm-up, enhancer training, stage-2 alternation.

One :class:`Trainer` owns the frozen CLIP, the enhancer, the prompt pair, their Adam
optimisers and the iteration counter; :func:`trainer.shared.schedule.phase_at` says which step the
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

Exact resume: the checkpoint (:mod:`trainer.shared.checkpoint`) holds both learners, both optimisers, the grad scalers, the
iteration, the RNG states, the last two enhancer snapshots (for I_{t-1}) and the losses.
The data order is a function of the seed and the iteration (see :mod:`trainer.shared.data`), so a
run interrupted and resumed sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from drdaemon.model.network import Enhancer, EnhancerSpec
from trainer.clip import losses as L
from trainer.clip.backbone import ClipBackbone, load_backbone
from trainer.clip.prompts import PromptPair
from trainer.shared.checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from trainer.shared.config import TrainConfig
from trainer.shared.data import (
    IterationBatches,
    TrainingSamples,
    clahe_prior,
    make_loader,
    preview_samples,
)
from trainer.shared.distributed import DistContext
from trainer.shared.enhancer import start_near_identity
from trainer.shared.export import export_weights
from trainer.shared.preview import preview_grid, write_preview
from trainer.shared.run_loop import SchemeRun
from trainer.shared.runtime import amp_dtype
from trainer.shared.schedule import Phase, PhaseKind, phase_at

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def score_temperature(setting: float | str, backbone: ClipBackbone) -> float:
    """``clip.logit_scale``: a number as given, or ``"model"`` for the CLIP's own temperature."""
    return backbone.own_temperature() if setting == "model" else float(setting)


def score_saturated(clip_loss: float, tolerance: float = 1e-3) -> bool:
    """L_CLIP at 0 or 1 to within ``tolerance``: the softmax is flat and passes no gradient."""
    return clip_loss < tolerance or clip_loss > 1.0 - tolerance


def clone_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Trainer(SchemeRun):
    """Everything a CLIP run holds; :meth:`run` (:class:`trainer.shared.run_loop.SchemeRun`) trains and exports."""

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
        super().__init__(cfg, abnormal, normal, out, ctx)  # seeded: a random CLIP is the same in every process
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
        self.text_features: Tensor | None = None
        self.score_history: list[dict[str, Any]] = []
        self.preview_inputs: tuple[Tensor, Tensor] | None = None
        if resume:
            self.load_checkpoint()
        self.enhancer_ddp, self.prompts_ddp = self._wrap(self.enhancer), self._wrap(self.prompts)

    # -- setup -------------------------------------------------------------------------
    @property
    def total_iters(self) -> int:
        return self.cfg.schedule.total_iters

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
    def _label(self) -> str:
        return phase_at(self.iteration, self.cfg.schedule).label

    def _train_one(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        phase = phase_at(self.iteration, self.cfg.schedule)
        if phase.kind is PhaseKind.PROMPT_RANK and self.iteration == phase.start:
            self.enter_prompt_round(phase)
        return self.step(phase, batch)

    def _observe(self, phase: str, values: Mapping[str, float]) -> None:
        """Keep the batch-mean scores for the model card's ``score.history``; warn when L_CLIP saturates."""
        scores = {k: round(v, 6) for k, v in values.items() if k.startswith("score_")}
        if scores:
            self.score_history.append({"iteration": self.iteration, "phase": phase, **scores})
        if self.ctx.is_main and "clip" in values and score_saturated(values["clip"]):
            tqdm.write(
                f"trainer: warning: L_CLIP = {values['clip']:.3g} at iteration {self.iteration}: the score is "
                "saturated and gives the enhancer no gradient (see loss.prompt_init_confidence and clip.logit_scale)",
                file=sys.stderr,
            )

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
                "run": self.run_record(),
                "score": {
                    "logit_scale": self.logit_scale,
                    "feature_size": list(self.feature_size) if self.feature_size else "train",
                    "feature_norm": self.cfg.loss.feature_norm,
                    "prompt_init_confidence": self.cfg.loss.prompt_init_confidence,
                    "history": self.score_history,
                },
            },
        )
