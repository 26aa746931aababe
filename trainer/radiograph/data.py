"""Captioned radiographs for pretraining the radiograph CLIP, made by the physics generator.

Why graded states: a CLIP shown only "clipped exposure" against "fused label" learns the
global statistics that tell those two apart (white background, histogram shape) and
nothing finer, and then cannot rank an enhancer's outputs. Here every part is rendered in
:data:`STATES`: the fused label, the clipped single exposure, a starved exposure, tone
curves near and far from the label, washed-out gray, amplified noise, partial fixes, gamma
and CLAHE renderings of the clipped exposure at several strengths, an over-enhanced label.
Each rendering carries its PSNR and SSIM against the part's label (the judge is later
asked to rank renderings the way these do) and a caption filled from templates with what
the generator knows: the exposure state, the part kind, its defects and the noise level.

Every caption of a well exposed rendering says "well exposed", every caption of a strongly
wrong one says "badly exposed" and the near misses say "nearly well exposed": the zero-shot
prompts :data:`WELL_PROMPT` and :data:`BAD_PROMPT` are then the words the captions taught.

Held out: parts come from their own seed subsets (:data:`PRETRAIN_SET`, :data:`HELD_OUT_SET`;
the benchmark uses 0 and the trainer's folders 1 and 2), and the training set keeps only
parts whose clipping dose saturates less than :data:`HELD_OUT_CLIPPED_PERCENT` of the part,
the held-out set only parts above it. A set is a pure function of (seed, subset, parts, size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from drdaemon.kernels.similarity import psnr, ssim
from drdaemon.kernels.tone import clahe_u16
from drdaemon.kernels.window import U16_MAX, frame_to_unit, unit_to_u16
from drdaemon.physics import (
    Part,
    Physics,
    expected_transmission,
    expose,
    make_part,
    part_rng,
    render,
    to_detector,
)

PRETRAIN_SET, HELD_OUT_SET = 4, 5
#: Parts whose abnormal exposure clips at least this share of the part are held out of training.
HELD_OUT_CLIPPED_PERCENT = 42.0
#: The label's own PSNR against itself (infinite) is recorded as this, so ranks stay finite.
LABEL_PSNR = 100.0
WELL_PROMPT = "a well exposed radiograph."
BAD_PROMPT = "a badly exposed radiograph."
#: How many parts of a wanted subset may be drawn and rejected (dose range) before giving up.
MAX_DRAWS_PER_PART = 20


@dataclass(frozen=True)
class State:
    """One exposure state: its name, its ordinal badness, the binary truth and its caption words."""

    name: str
    grade: int  # 0 well exposed, 1 near miss, 2 strongly wrong
    phrases: tuple[str, ...]

    @property
    def well(self) -> bool | None:
        """True well exposed, False badly exposed, None a near miss (left out of binary accuracy)."""
        return {0: True, 1: None}.get(self.grade, False)

    @property
    def quality_words(self) -> str:
        return {0: "well exposed", 1: "nearly well exposed"}.get(self.grade, "badly exposed")


STATES: tuple[State, ...] = (
    State(
        "label",
        0,
        ("sections thin and thick both mid-gray with their detail", "fused exposure bracket, detail everywhere"),
    ),
    State(
        "clipped",
        2,
        (
            "thin sections clipped to white, thick sections starved and dark",
            "single exposure saturated over the thin sections",
        ),
    ),
    State("starved", 2, ("under-exposed, thick sections dark and grainy", "too few photons, noisy and dark")),
    State("dark-slight", 1, ("slightly too dark",)),
    State("dark-strong", 2, ("far too dark, thick sections lost in black",)),
    State("bright-slight", 1, ("slightly too bright",)),
    State("bright-strong", 2, ("far too bright, thin sections washed out",)),
    State("gray-slight", 1, ("slightly low contrast",)),
    State("gray-strong", 2, ("washed-out flat gray, contrast gone",)),
    State("noisy-slight", 1, ("slightly noisy",)),
    State("noisy-strong", 2, ("strongly amplified noise",)),
    State("fixed-most", 1, ("mostly corrected, some clipping left",)),
    State("fixed-half", 2, ("only partly corrected, clipped regions still flat",)),
    State("gamma-mild", 2, ("gamma-brightened clipped exposure, clipped regions still flat",)),
    State("gamma-strong", 2, ("strongly gamma-brightened clipped exposure, gray and flat",)),
    State("clahe-mild", 2, ("CLAHE of a clipped exposure, noise amplified in thick sections",)),
    State("clahe-strong", 2, ("strong CLAHE of a clipped exposure, noise and halos",)),
    State("over-enhanced", 2, ("over-enhanced, halos and amplified noise",)),
)
STATE_INDEX = {state.name: k for k, state in enumerate(STATES)}
TEMPLATES = (
    "a {quality} radiograph of a cast {kind}{defects}: {phrase}, {noise}.",
    "{quality} x-ray of an aluminium {kind}{defects}; {phrase}; {noise}.",
    "a {quality} digital radiograph, {kind}{defects}, {phrase}, {noise}.",
)


@dataclass(frozen=True)
class Rendering:
    """What is known about one captioned frame."""

    part: int  # index of the part within its set
    kind: str
    state: str
    grade: int
    well: bool | None
    caption: str
    psnr: float  # against the part's label, dB (LABEL_PSNR for the label itself)
    ssim: float
    clipped_percent: float


@dataclass
class CaptionedSet:
    """Frames (parts, states, H, W) uint16 and one :class:`Rendering` per frame, part-major."""

    frames: np.ndarray
    renderings: list[Rendering]
    seed: int
    subset: int

    def __len__(self) -> int:
        return len(self.renderings)

    def frame(self, index: int) -> np.ndarray:
        return self.frames[index // len(STATES), index % len(STATES)]


def _tone(label: np.ndarray, gamma: float) -> np.ndarray:
    return np.power(label, gamma)


def _gray(label: np.ndarray, contrast: float) -> np.ndarray:
    return 0.5 + contrast * (label - 0.5)


def _noisy(rng: np.random.Generator, label: np.ndarray, sigma: float) -> np.ndarray:
    return label + rng.normal(0.0, sigma, label.shape).astype(np.float32)


def _clahe(unit: np.ndarray, clip: float, tiles: int = 8) -> np.ndarray:
    """The daemon's CLAHE, with as many gray levels per tile pixel as a 1024-pixel frame has, so
    that the clip limit acts on small frames too (see :func:`clahe_u16`)."""
    tile_pixels = unit.size // (tiles * tiles)
    levels = 2 ** int(np.clip(np.floor(np.log2(max(tile_pixels // 4, 1))), 4, 12))  # 4096 at 1024 pixels
    return clahe_u16(unit_to_u16(unit), clip, tiles, levels).astype(np.float32) / U16_MAX


def state_renderings(
    rng: np.random.Generator, part: Part, physics: Physics, abnormal: np.ndarray, label: np.ndarray
) -> dict[str, np.ndarray]:
    """Every state of :data:`STATES` as a [0, 1] float32 frame, from one part's exposures."""
    y = label.astype(np.float32) / U16_MAX
    x = frame_to_unit(abnormal)[0]
    starved_dose = physics.dose / float(rng.uniform(24.0, 64.0))
    starved = to_detector(expose(rng, expected_transmission(part.thickness_mm, physics), physics, starved_dose))
    makers: dict[str, Callable[[], np.ndarray]] = {
        "label": lambda: y,
        "clipped": lambda: x,
        "starved": lambda: frame_to_unit(starved)[0],
        "dark-slight": lambda: _tone(y, float(rng.uniform(1.3, 1.6))),
        "dark-strong": lambda: _tone(y, float(rng.uniform(2.2, 3.2))),
        "bright-slight": lambda: _tone(y, float(rng.uniform(0.62, 0.77))),
        "bright-strong": lambda: _tone(y, float(rng.uniform(0.3, 0.42))),
        "gray-slight": lambda: _gray(y, float(rng.uniform(0.65, 0.8))),
        "gray-strong": lambda: _gray(y, float(rng.uniform(0.15, 0.3))),
        "noisy-slight": lambda: _noisy(rng, y, float(rng.uniform(0.02, 0.035))),
        "noisy-strong": lambda: _noisy(rng, y, float(rng.uniform(0.08, 0.14))),
        "fixed-most": lambda: 0.2 * x + 0.8 * y,
        "fixed-half": lambda: 0.5 * x + 0.5 * y,
        "gamma-mild": lambda: _tone(x, float(rng.uniform(0.45, 0.65))),
        "gamma-strong": lambda: _tone(x, float(rng.uniform(0.25, 0.35))),
        "clahe-mild": lambda: _clahe(x, float(rng.uniform(1.5, 2.5))),
        "clahe-strong": lambda: _clahe(x, float(rng.uniform(5.0, 8.0))),
        "over-enhanced": lambda: _clahe(y, float(rng.uniform(6.0, 10.0))),
    }
    return {state.name: np.clip(makers[state.name](), 0.0, 1.0).astype(np.float32) for state in STATES}


def _count_phrase(part: Part) -> str:
    kinds = [d.kind for d in part.defects]
    if not kinds:
        return " without defects"
    names = {"pore": "pore", "inclusion": "inclusion", "crack": "crack"}
    parts = [
        f"{kinds.count(k)} {names[k]}{'s' if kinds.count(k) > 1 else ''}"
        for k in ("pore", "inclusion", "crack")
        if kinds.count(k)
    ]
    return " with " + ", ".join(parts)


def _noise_phrase(state: str, physics: Physics) -> str:
    if state in ("noisy-strong", "starved", "clahe-strong", "over-enhanced"):
        return "high noise"
    if state in ("noisy-slight", "clahe-mild", "clipped", "gamma-mild", "gamma-strong", "fixed-half"):
        return "visible noise in the thick sections"
    return "low noise" if physics.read_noise < 25 else "moderate noise"


def caption(rng: np.random.Generator, state: State, part: Part, physics: Physics) -> str:
    """A caption from a random template, filled with what the generator knows."""
    template = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))]
    phrase = state.phrases[int(rng.integers(0, len(state.phrases)))]
    return template.format(
        quality=state.quality_words,
        kind=part.kind,
        defects=_count_phrase(part),
        phrase=phrase,
        noise=_noise_phrase(state.name, physics),
    )


def _wanted(physics: Physics, held_out: bool) -> bool:
    return (physics.clipped_percent >= HELD_OUT_CLIPPED_PERCENT) == held_out


def captioned_part(
    seed: int, subset: int, draw: int, size: int, held_out: bool
) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
    """One part's state frames (states, size, size) uint16 and their records, or None when its
    dose falls outside the set's range."""
    rng = part_rng(seed, subset, draw)
    part = make_part(rng, size, size)
    abnormal, label, physics = render(rng, part)
    if not _wanted(physics, held_out):
        return None
    units = state_renderings(rng, part, physics, abnormal, label)
    frames = np.stack([unit_to_u16(units[s.name]) for s in STATES])
    records = []
    for state, frame in zip(STATES, frames, strict=False):
        is_label = state.name == "label"
        records.append(
            {
                "kind": part.kind,
                "state": state.name,
                "grade": state.grade,
                "well": state.well,
                "caption": caption(rng, state, part, physics),
                "psnr": LABEL_PSNR if is_label else min(psnr(label, frame), LABEL_PSNR),
                "ssim": 1.0 if is_label else ssim(label, frame),
                "clipped_percent": round(physics.clipped_percent, 2),
            }
        )
    return frames, records


def make_captioned_set(
    seed: int, parts: int, size: int = 256, held_out: bool = False, progress: bool = True
) -> CaptionedSet:
    """``parts`` parts of the training (or held-out) subset, each in every state, reproducibly."""
    subset = HELD_OUT_SET if held_out else PRETRAIN_SET
    frames: list[np.ndarray] = []
    renderings: list[Rendering] = []
    draw = 0
    bar = tqdm(
        total=parts, desc="captioned parts" + (" (held out)" if held_out else ""), unit="part", disable=not progress
    )
    while len(frames) < parts:
        if draw >= MAX_DRAWS_PER_PART * parts:
            raise RuntimeError(f"only {len(frames)} of {parts} parts fell in the dose range after {draw} draws")
        made = captioned_part(seed, subset, draw, size, held_out)
        draw += 1
        if made is None:
            continue
        part_frames, records = made
        renderings.extend(Rendering(part=len(frames), **record) for record in records)
        frames.append(part_frames)
        bar.update()
    bar.close()
    return CaptionedSet(
        np.stack(frames) if frames else np.zeros((0, len(STATES), size, size), np.uint16), renderings, seed, subset
    )
