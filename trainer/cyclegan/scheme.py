"""The CycleGAN scheme (``python -m trainer --scheme cyclegan``): unpaired translation, no CLIP.

Two generators, each the daemon's own enhancer (:class:`drdaemon.model.network.Enhancer`):
``to_normal`` maps abnormally exposed frames to well exposed ones and is the one exported,
so it runs whole-frame in the daemon's ``net`` engine; ``to_abnormal`` maps back. Two 70 x 70
PatchGAN discriminators (:mod:`trainer.cyclegan.patchgan`) judge each domain. One iteration:

* generators: least-squares adversarial loss against both discriminators, plus
  ``cycle_weight`` times the cycle-consistency L1 (abnormal -> normal -> abnormal and back),
  plus ``identity_fraction * cycle_weight`` times the identity L1 (a generator fed a frame
  of its target domain should leave it alone; 0 switches the term off);
* optionally the paper's two feature priors on the forward generator, computed on a frozen
  feature extractor, the visual tower of the ``[clip]`` table's CLIP (for this project: the
  bundled radiograph CLIP, ``--clip radiograph-clip --clip-weights bundled``): the feature
  identity ``feature_identity * sum_l alpha_l * |Phi_l(G(I)) - Phi_l(I)|^2 / E_l`` and the CLAHE
  prior ``clahe_prior * sum_l gamma_l * |Phi_l(G(I)) - Phi_l(CLAHE(I))|^2 / E_l``, with
  ``alpha`` and ``gamma`` the ``[loss]`` table's level weights and ``E_l`` the input's own
  feature energy at level ``l`` (a relative error, so the weights mean the same for any
  extractor). The maps are taken at the crop's size. Both weights 0 (the default) load no CLIP;
* discriminators: least squares, real frames towards 1, generated ones towards 0, the
  generated ones drawn through a history buffer of 50 (:mod:`trainer.shared.history`); halved, as
  published, so they learn at half the generators' rate.

Adam (0.5, 0.999) at 2e-4 for ``constant_iters``, then decaying linearly towards 0 over
``decay_iters``. Can the reverse generator darken? The enhancer returns
``clamp(I / (L + eps), 0, 1)`` with ``L`` after a ReLU and no upper bound, so ``L > 1``
darkens: both directions use the architecture unchanged, both start at ``L`` about 1 (the
identity, as the CLIP scheme does), and the exported weights are the forward generator's as
the daemon loads any enhancer.

Exact resume: the checkpoint (:mod:`trainer.shared.checkpoint`) holds the four networks, both
optimisers, both learning-rate schedules, the grad scalers, both history buffers, the RNG
states, the iteration and the losses; the data order and the history buffers' draws are
functions of the seed and the iteration, as in the CLIP scheme.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from drdaemon.model.network import Enhancer, EnhancerSpec
from trainer.clip import losses
from trainer.clip.backbone import ClipBackbone, load_backbone
from trainer.cyclegan.patchgan import PatchDiscriminator
from trainer.shared.checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from trainer.shared.config import TrainConfig
from trainer.shared.data import IterationBatches, TrainingSamples, make_loader, preview_samples
from trainer.shared.distributed import DistContext
from trainer.shared.enhancer import start_near_identity
from trainer.shared.export import export_weights
from trainer.shared.history import HistoryBuffer
from trainer.shared.preview import preview_grid, write_preview
from trainer.shared.run_loop import SchemeRun
from trainer.shared.runtime import amp_dtype

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

SCHEME = "cyclegan"
#: History-buffer streams, one per discriminator.
NORMAL_STREAM, ABNORMAL_STREAM = 0, 1


@dataclass(frozen=True)
class LinearDecay:
    """Learning-rate factor of step ``i``: 1 for ``constant`` steps, then down by 1/(decay+1) a step."""

    constant: int
    decay: int

    def __call__(self, step: int) -> float:
        if step < self.constant:
            return 1.0
        return max(0.0, 1.0 - (step - self.constant + 1) / (self.decay + 1))


def least_squares(scores: Tensor, real: bool) -> Tensor:
    """LSGAN: the mean squared distance of the patch scores from 1 (real) or 0 (generated)."""
    scores = scores.float()
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


@dataclass
class Translations:
    """One generator pass over a batch of each domain."""

    fake_normal: Tensor
    fake_abnormal: Tensor
    cycle_abnormal: Tensor
    cycle_normal: Tensor
    same_normal: Tensor | None = None
    same_abnormal: Tensor | None = None


class Generators(nn.Module):
    """Both generators in one module, so one DDP wrapper averages both gradients."""

    def __init__(self, spec: EnhancerSpec) -> None:
        super().__init__()
        self.to_normal = start_near_identity(Enhancer(spec))
        self.to_abnormal = start_near_identity(Enhancer(spec))

    def forward(self, abnormal: Tensor, normal: Tensor, identity: bool) -> Translations:
        fake_normal, fake_abnormal = self.to_normal(abnormal), self.to_abnormal(normal)
        out = Translations(fake_normal, fake_abnormal, self.to_abnormal(fake_normal), self.to_normal(fake_abnormal))
        if identity:
            out.same_normal, out.same_abnormal = self.to_normal(normal), self.to_abnormal(abnormal)
        return out


class Discriminators(nn.Module):
    """The normal-domain and the abnormal-domain PatchGAN."""

    def __init__(self, in_ch: int, width: int) -> None:
        super().__init__()
        self.normal = PatchDiscriminator(in_ch, width)
        self.abnormal = PatchDiscriminator(in_ch, width)

    def forward(self, normal: Tensor, abnormal: Tensor) -> tuple[Tensor, Tensor]:
        return self.normal(normal), self.abnormal(abnormal)


class CycleGanTrainer(SchemeRun):
    """Everything a CycleGAN run holds; :meth:`run` (:class:`trainer.shared.run_loop.SchemeRun`) trains and exports."""

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
        super().__init__(cfg, abnormal, normal, out, ctx)
        c = cfg.cyclegan
        spec = EnhancerSpec(in_ch=cfg.enhancer.in_ch, illumination_scale=cfg.enhancer.illumination_scale)
        self.generators = Generators(spec).to(self.device)
        self.discriminators = Discriminators(spec.in_ch, c.disc_width).to(self.device)
        self.generator_optim = torch.optim.Adam(self.generators.parameters(), lr=c.lr, betas=c.betas)
        self.discriminator_optim = torch.optim.Adam(self.discriminators.parameters(), lr=c.lr, betas=c.betas)
        decay = LinearDecay(c.constant_iters, c.decay_iters)
        self.generator_schedule = LambdaLR(self.generator_optim, decay)
        self.discriminator_schedule = LambdaLR(self.discriminator_optim, decay)
        self.amp_dtype = amp_dtype(cfg.run.precision, self.device)
        fp16 = self.amp_dtype == torch.float16
        self.generator_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.discriminator_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.history_normal = HistoryBuffer(c.history_size, cfg.run.seed, NORMAL_STREAM)
        self.history_abnormal = HistoryBuffer(c.history_size, cfg.run.seed, ABNORMAL_STREAM)
        self.preview_inputs: Tensor | None = None
        self.feature_extractor: ClipBackbone | None = None
        if c.feature_priors:
            clip = cfg.clip
            self.feature_extractor = load_backbone(clip.model, clip.weights, clip.cache_dir).to(self.device)
        if resume:
            self.load_checkpoint()
        self.generators_ddp = self._wrap(self.generators)
        self.discriminators_ddp = self._wrap(self.discriminators)

    @property
    def total_iters(self) -> int:
        return self.cfg.cyclegan.total_iters

    @property
    def forward_generator(self) -> Enhancer:
        """The abnormal -> well exposed generator: the weights the daemon runs."""
        return self.generators.to_normal

    # -- setup -------------------------------------------------------------------------
    def _loader(self, start: int, end: int) -> DataLoader[dict[str, Tensor]]:
        """Unpaired abnormal and normal samples, the CLIP scheme's loader and augmentation."""
        samples = TrainingSamples(self.abnormal_files, self.normal_files, self.cfg.data, self.cfg.run.seed)
        batches = IterationBatches(start, [self.cfg.cyclegan.batch] * (end - start), self.ctx.rank, self.ctx.world)
        return make_loader(samples, batches, self.cfg.data.workers, pin_memory=self.device.type == "cuda")

    # -- one iteration -----------------------------------------------------------------
    def _optimise(self, loss: Tensor, optim: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()

    def _from_history(self, history: HistoryBuffer, generated: Tensor) -> Tensor:
        """This process's share of what the buffer shows for the global batch of generated images."""
        generated = generated.detach()
        if not self.ctx.enabled:
            return history.query(generated, self.iteration)
        parts = [torch.empty_like(generated) for _ in range(self.ctx.world)]
        dist.all_gather(parts, generated.contiguous())
        shown = history.query(torch.cat(parts), self.iteration)
        share = len(generated)
        return shown[self.ctx.rank * share : (self.ctx.rank + 1) * share]

    def step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        abnormal = batch["abnormal"].to(self.device, non_blocking=True)
        normal = batch["normal"].to(self.device, non_blocking=True)
        c = self.cfg.cyclegan
        identity_weight = c.identity_fraction * c.cycle_weight
        # Generators against frozen discriminators (their gradients are not needed).
        self.discriminators.requires_grad_(False)
        with self._autocast():
            out: Translations = self.generators_ddp(abnormal, normal, identity_weight > 0)
            adversarial = least_squares(self.discriminators.normal(out.fake_normal), True) + least_squares(
                self.discriminators.abnormal(out.fake_abnormal), True
            )
            cycle = F.l1_loss(out.cycle_abnormal, abnormal) + F.l1_loss(out.cycle_normal, normal)
            loss = adversarial + c.cycle_weight * cycle
            parts = {"adversarial": adversarial.detach(), "cycle": cycle.detach()}
            if self.feature_extractor is not None:
                priors = self.feature_priors(abnormal, batch["clahe"].to(self.device), out.fake_normal)
                loss = loss + c.feature_identity * priors["feature_identity"] + c.clahe_prior * priors["clahe_prior"]
                parts.update({k: v.detach() for k, v in priors.items()})
            if out.same_normal is not None and out.same_abnormal is not None:
                identity = F.l1_loss(out.same_normal, normal) + F.l1_loss(out.same_abnormal, abnormal)
                loss = loss + identity_weight * identity
                parts["identity"] = identity.detach()
        self._optimise(loss, self.generator_optim, self.generator_scaler)
        self.discriminators.requires_grad_(True)
        # Discriminators on real frames and on generated ones through the history buffers.
        shown_normal = self._from_history(self.history_normal, out.fake_normal)
        shown_abnormal = self._from_history(self.history_abnormal, out.fake_abnormal)
        with self._autocast():
            scores_normal, scores_abnormal = self.discriminators_ddp(
                torch.cat([normal, shown_normal]), torch.cat([abnormal, shown_abnormal])
            )
            real_n, fake_n = scores_normal.split(len(normal))
            real_a, fake_a = scores_abnormal.split(len(abnormal))
            d_normal = 0.5 * (least_squares(real_n, True) + least_squares(fake_n, False))
            d_abnormal = 0.5 * (least_squares(real_a, True) + least_squares(fake_a, False))
        self._optimise(d_normal + d_abnormal, self.discriminator_optim, self.discriminator_scaler)
        lr = torch.tensor(self.generator_schedule.get_last_lr()[0])
        self.generator_schedule.step()
        self.discriminator_schedule.step()
        return {
            "generators": loss.detach(),
            **parts,
            "disc_normal": d_normal.detach(),
            "disc_abnormal": d_abnormal.detach(),
            "lr": lr,
        }

    def feature_priors(self, abnormal: Tensor, clahe: Tensor, fake_normal: Tensor) -> dict[str, Tensor]:
        """The feature identity and CLAHE-prior terms (unweighted) of the forward generator's output."""
        if self.feature_extractor is None:
            raise RuntimeError("feature priors need cyclegan.feature_identity or cyclegan.clahe_prior above 0")
        w = self.cfg.loss
        levels = losses.deepest_level(w.alpha, w.gamma)
        with torch.no_grad():
            targets = [
                m.split(len(abnormal))
                for m in self.feature_extractor.feature_maps(torch.cat([abnormal, clahe]), levels)
            ]
        inputs = [t[0] for t in targets]
        energies = losses.feature_energy(inputs)
        maps = self.feature_extractor.feature_maps(fake_normal, levels)
        return {
            "feature_identity": losses.feature_loss(maps, inputs, w.alpha, energies),
            "clahe_prior": losses.feature_loss(maps, [t[1] for t in targets], w.gamma, energies),
        }

    # -- the run -------------------------------------------------------------------------
    def _label(self) -> str:
        return "constant lr" if self.iteration < self.cfg.cyclegan.constant_iters else "lr decay"

    def _train_one(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.step(batch)

    def preview(self, writer: SummaryWriter | None) -> Path:
        """input | forward generator's output | back through the reverse generator, per fixed frame."""
        if self.preview_inputs is None:
            self.preview_inputs = preview_samples(self.abnormal_files, self.cfg.data)
        inputs = self.preview_inputs.to(self.device)
        with torch.no_grad():
            outputs = self.generators.to_normal(inputs)
            cycled = self.generators.to_abnormal(outputs)
        grid = preview_grid(inputs.cpu(), outputs.float().cpu(), cycled.float().cpu())
        if writer is not None:
            writer.add_image("preview/input|output|cycle", grid, self.iteration, dataformats="HW")
        return write_preview(self.run_dir / "previews", self.iteration, grid)

    # -- checkpoints and export ---------------------------------------------------------
    def _stateful(self) -> dict[str, Any]:
        """Everything with a ``state_dict`` that an exact resume restores, by checkpoint key."""
        return {
            "generators": self.generators,
            "discriminators": self.discriminators,
            "generator_optim": self.generator_optim,
            "discriminator_optim": self.discriminator_optim,
            "generator_schedule": self.generator_schedule,
            "discriminator_schedule": self.discriminator_schedule,
            "generator_scaler": self.generator_scaler,
            "discriminator_scaler": self.discriminator_scaler,
        }

    def save_checkpoint(self, started: float) -> Path | None:
        if not self.ctx.is_main:
            return None
        state = {
            "scheme": SCHEME,
            "clip": None,
            "iteration": self.iteration,
            **{key: part.state_dict() for key, part in self._stateful().items()},
            "history_normal": self.history_normal.state_dict(),
            "history_abnormal": self.history_abnormal.state_dict(),
            "rng": rng_state(),
            "losses": self.loss_values(),
            "elapsed_s": self.elapsed_before + time.monotonic() - started,
            "config": self.cfg.model_dump(mode="json"),
        }
        return write_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> None:
        state = read_checkpoint(self.checkpoint_path, None, scheme=SCHEME)
        for key, part in self._stateful().items():
            part.load_state_dict(state[key])
        self.history_normal.load_state_dict(state["history_normal"], self.device)
        self.history_abnormal.load_state_dict(state["history_abnormal"], self.device)
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.losses = dict(state["losses"])
        self.elapsed_before = float(state["elapsed_s"])

    def export(self, duration: float) -> tuple[str, Path]:
        return export_weights(
            self.out,
            copy.deepcopy(self.forward_generator).cpu(),
            config=self.cfg.model_dump(mode="json"),
            data=self.data_summary,
            clip=None,
            final_losses=self.loss_values(),
            iterations=self.iteration,
            duration_s=duration,
            extra={"run": self.run_record()},
            scheme=SCHEME,
        )
