"""Does a CLIP judge exposure well enough to guide the enhancer? Measured before it is used.

Two checks, both zero-shot with the prompts :data:`~trainer.radiograph.data.WELL_PROMPT`
and :data:`~trainer.radiograph.data.BAD_PROMPT`:

* **Accuracy**: a frame is called well exposed when its image embedding is closer to the
  well prompt than to the bad one; scored on frames whose truth is clear (near misses are
  left out).
* **Ranking**: within each part, the score (cosine to the well prompt minus cosine to the
  bad prompt) should order the part's renderings the way their PSNR (and SSIM) against the
  label do: Spearman's rank correlation per part, averaged over parts.

A judge that passes the first and fails the second has learned to tell the states apart by
some global statistic, not to rank outputs, which is what the enhancer needs from it.
The same checks run on real CR frames (:func:`real_frame_renderings`): the windowed frame
as the well exposed reference and deliberately mis-exposed renderings of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn

from drdaemon.kernels.similarity import psnr, ssim
from drdaemon.kernels.window import U16_MAX, frame_to_unit, unit_to_u16
from trainer.clip.backbone import OPENAI_MEAN, OPENAI_STD
from trainer.radiograph.data import BAD_PROMPT, LABEL_PSNR, WELL_PROMPT, CaptionedSet

#: Real CR frames of pydicom-data the judge is also checked on.
REAL_FRAMES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")


@dataclass
class JudgeReport:
    """What the card stores and the command prints."""

    frames: int
    parts: int
    accuracy: float  # zero-shot well vs badly exposed, near misses left out
    accuracy_well: float  # on the well exposed frames alone
    accuracy_bad: float  # on the badly exposed frames alone
    spearman_psnr: float  # mean over parts of the per-part rank correlation
    spearman_ssim: float
    #: The same without the reference rendering itself (the label): the order among the flawed ones.
    spearman_psnr_flawed: float = float("nan")
    spearman_ssim_flawed: float = float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def clip_input(gray: Tensor, size: int) -> Tensor:
    """[0, 1] gray images (B, 1, H, W) as the CLIP image tower takes them, as the trainer feeds it."""
    x = gray.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def prompt_features(clip: nn.Module, context_length: int) -> Tensor:
    """Unit-norm text features (2, D) of the bad (row 0) and well (row 1) prompts."""
    from open_clip.tokenizer import tokenize

    tokens = tokenize([BAD_PROMPT, WELL_PROMPT], context_length=context_length)
    return F.normalize(clip.encode_text(tokens.to(next(clip.parameters()).device)), dim=-1)


def well_scores(image_features: Tensor, text_features: Tensor) -> Tensor:
    """cos(image, well) - cos(image, bad) per image; > 0 reads 'well exposed'."""
    return image_features.float() @ (text_features[1] - text_features[0]).float()


def zero_shot_accuracy(scores: np.ndarray, well: list[bool | None]) -> tuple[float, float, float]:
    """(overall, on well exposed, on badly exposed) accuracy of ``score > 0``; None truths skipped."""
    truth = np.array([w for w in well if w is not None], dtype=bool)
    called = np.asarray(scores)[[w is not None for w in well]] > 0
    if truth.size == 0:
        return float("nan"), float("nan"), float("nan")
    correct = called == truth
    return (
        float(correct.mean()),
        float(correct[truth].mean()) if truth.any() else float("nan"),
        float(correct[~truth].mean()) if (~truth).any() else float("nan"),
    )


def mean_part_spearman(scores: np.ndarray, quality: np.ndarray, parts: np.ndarray) -> float:
    """Mean over parts of Spearman's rho between score and quality within the part."""
    rhos = []
    for part in np.unique(parts):
        mine = parts == part
        if mine.sum() < 2 or np.ptp(quality[mine]) == 0 or np.ptp(scores[mine]) == 0:
            continue
        rhos.append(float(spearmanr(scores[mine], quality[mine]).statistic))
    return float(np.mean(rhos)) if rhos else float("nan")


def centre_view(frame: np.ndarray, size: int) -> np.ndarray:
    """The frame's centre square resized to ``size`` (area interpolation), [0, 1] float32."""
    h, w = frame.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(frame[top : top + side, left : left + side], dtype=np.float32) / U16_MAX
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def image_features_of(clip: nn.Module, frames: list[np.ndarray], size: int, batch: int = 64) -> Tensor:
    """Unit-norm image features of uint16 frames, each seen whole (centre square) at ``size``."""
    feats = []
    for start in range(0, len(frames), batch):
        views = np.stack([centre_view(f, size) for f in frames[start : start + batch]])
        feats.append(F.normalize(clip.encode_image(clip_input(torch.from_numpy(views)[:, None], size)), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def judge(
    clip: nn.Module,
    frames: list[np.ndarray],
    well: list[bool | None],
    psnrs: np.ndarray,
    ssims: np.ndarray,
    parts: np.ndarray,
    image_size: int,
    context_length: int,
) -> tuple[JudgeReport, np.ndarray]:
    """Both checks on a list of frames; returns the report and the per-frame scores."""
    was_training = clip.training
    clip.eval()
    scores = (
        well_scores(image_features_of(clip, frames, image_size), prompt_features(clip, context_length)).cpu().numpy()
    )
    clip.train(was_training)
    overall, on_well, on_bad = zero_shot_accuracy(scores, well)
    report = JudgeReport(
        frames=len(frames),
        parts=int(np.unique(parts).size),
        accuracy=overall,
        accuracy_well=on_well,
        accuracy_bad=on_bad,
        spearman_psnr=mean_part_spearman(scores, psnrs, parts),
        spearman_ssim=mean_part_spearman(scores, ssims, parts),
    )
    flawed = psnrs < LABEL_PSNR
    report.spearman_psnr_flawed = mean_part_spearman(scores[flawed], psnrs[flawed], parts[flawed])
    report.spearman_ssim_flawed = mean_part_spearman(scores[flawed], ssims[flawed], parts[flawed])
    return report, scores


def judge_captioned(
    clip: nn.Module, data: CaptionedSet, image_size: int, context_length: int
) -> tuple[JudgeReport, np.ndarray]:
    """Both checks on a captioned (held-out) set."""
    r = data.renderings
    frames = [data.frame(i) for i in range(len(r))]
    return judge(
        clip,
        frames,
        [x.well for x in r],
        np.array([x.psnr for x in r]),
        np.array([x.ssim for x in r]),
        np.array([x.part for x in r]),
        image_size,
        context_length,
    )


def real_frame_renderings(frame: np.ndarray, short_side: int = 512) -> list[tuple[str, bool | None, np.ndarray]]:
    """A real frame windowed (the well exposed reference) and deliberately mis-exposed.

    (name, truth, uint16 frame) triples; the frame is first shrunk so its short side is
    ``short_side`` pixels. Mis-exposures: a window that clips the bright or the dark third,
    tone curves too dark and too bright, washed-out gray, amplified noise, and a slight
    tone error left ambiguous (truth None).
    """
    unit = frame_to_unit(frame)[0]
    scale = short_side / min(unit.shape)
    if scale < 1:
        unit = cv2.resize(unit, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    lo, hi = np.percentile(unit, [33, 67])
    renderings = [
        ("windowed", True, unit),
        ("clipped-bright", False, np.clip(unit / max(hi, 1e-3), 0, 1)),
        ("clipped-dark", False, np.clip((unit - lo) / max(1 - lo, 1e-3), 0, 1)),
        ("too-dark", False, unit**2.8),
        ("too-bright", False, unit**0.3),
        ("washed-out", False, 0.5 + 0.2 * (unit - 0.5)),
        ("noisy", False, np.clip(unit + rng.normal(0, 0.12, unit.shape), 0, 1)),
        ("slightly-dark", None, unit**1.4),
    ]
    return [(name, truth, unit_to_u16(np.asarray(img, np.float32))) for name, truth, img in renderings]


def judge_real(
    clip: nn.Module, paths: list[Path], image_size: int, context_length: int
) -> tuple[JudgeReport, dict[str, dict[str, float]]]:
    """Both checks on real frames (one 'part' per frame); per-rendering scores by frame."""
    from drdaemon.io.readers import read_dicom

    frames, truths, psnrs, ssims, parts, names = [], [], [], [], [], []
    for k, path in enumerate(paths):
        renderings = real_frame_renderings(read_dicom(path))
        reference = renderings[0][2]
        for name, truth, image in renderings:
            same = name == "windowed"
            frames.append(image)
            truths.append(truth)
            psnrs.append(LABEL_PSNR if same else min(psnr(reference, image), LABEL_PSNR))
            ssims.append(1.0 if same else ssim(reference, image))
            parts.append(k)
            names.append((Path(path).stem, name))
    report, scores = judge(
        clip, frames, truths, np.array(psnrs), np.array(ssims), np.array(parts), image_size, context_length
    )
    by_frame: dict[str, dict[str, float]] = {}
    for (frame_name, name), score in zip(names, scores, strict=False):
        by_frame.setdefault(frame_name, {})[name] = round(float(score), 4)
    return report, by_frame


def real_frame_paths() -> list[Path]:
    """The pydicom-data CR frames, where that package is installed (else an empty list)."""
    try:
        import data_store
    except ImportError:
        return []
    folder = Path(data_store.__file__).parent / "data"
    return [folder / name for name in REAL_FRAMES if (folder / name).is_file()]
