"""A physics-based synthetic DR benchmark: casting-like parts, one bad exposure, one good label.

The physics generator, one module low in the house (it imports only the kernels): the
evaluation, the selftest, the bench and the trainer import it; ``python -m drdaemon.synth``
(:mod:`drdaemon.synth`) writes a benchmark folder with it.

Why synthetic: the published figures were measured on private casting frames with labels.
This generator gives anyone the same kind of yardstick, regenerated bit for bit from a seed.

The model, per part:

1. **Geometry.** A thickness map in millimetres of a light-alloy casting seen along the
   beam: a *wheel* (web, rounded rim, thick hub, cylindrical spokes, bore, bolt holes,
   lightening windows) or a *bracket* (plate with flange, cylindrical ribs, thick bosses,
   some bored through, holes). Edges get a small fillet blur. The frame's short side spans
   200 mm, so a 1024-pixel frame has 0.2 mm pixels.
2. **Defects** placed where material is thick enough: gas pores (spheres of missing
   material), inclusions (ellipsoids of a denser material, as extra equivalent thickness)
   and cracks (thin polylines of missing material). Their boxes are written to JSON.
3. **Exposure.** Beer-Lambert transmission ``exp(-mu * thickness)``, detector blur,
   scatter (a wide low-pass of what the part scatters, see :func:`expected_transmission`),
   Poisson photon noise (a random number of digital levels per photon) plus Gaussian read
   noise, and saturation at 65535.
4. **The abnormal frame** is one exposure whose dose saturates a random 25 to 50 % of the
   part's pixels: thin sections clip, while the thickest get a few hundred photons per
   pixel and sit in the bottom few percent of the scale.
5. **The label** fuses a bracket of exposures (factors of 4 apart, from one that saturates
   nowhere up to 64 times the abnormal dose): per pixel, the photon-weighted mean of every
   unsaturated reading estimates transmission with high SNR everywhere. Its logarithm is
   linear in thickness; 60 % of its large-scale trend (a Gaussian of 3 % of the short side) is
   subtracted, the dynamic-range compression of DR post-processing, and the result is
   windowed over the part (0.5 to 99.5 percentile): thin and thick sections are both
   mid-scale with their local detail, as a well exposed, well processed frame would show.

Each part draws its randomness from ``SeedSequence([seed, set, index])``: a part does not
change when the number of parts asked for does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from tqdm import tqdm

from drdaemon.kernels.window import U16_MAX, unit_to_u16

FRAME_SPAN_MM = 200.0  # physical length of the frame's short side
MU_PER_MM = 0.05  # effective linear attenuation of a light alloy (aluminium near 100 keV)
SATURATION = float(U16_MAX)
#: The label removes this share of the large-scale (Gaussian, this fraction of the short side)
#: log-transmission trend.
LABEL_TREND_WEIGHT = 0.6
LABEL_TREND_SIGMA = 0.03
MAX_PIXELS = 5732 * 2333
#: Thickness above which a pixel is the part's material (the label's window and the mask use it).
MATERIAL_MM = 0.5
TEST_SET, TRAIN_ABNORMAL_SET, TRAIN_NORMAL_SET = 0, 1, 2


@dataclass
class Defect:
    kind: str  # pore | inclusion | crack
    box: list[int]  # x0, y0, x1, y1 in pixels, inclusive-exclusive
    thickness_mm: float  # part thickness around the defect (thick = starved in the bad exposure)
    #: Change of the material's equivalent thickness at the defect's centre: its contrast in a
    #: log-transmission image is about ``mu * depth_mm`` whatever the thickness around it.
    depth_mm: float = 0.0


@dataclass
class Part:
    kind: str
    thickness_mm: np.ndarray  # float32, height x width; 0 outside the part and in holes
    defects: list[Defect] = field(default_factory=list)


@dataclass(frozen=True)
class Physics:
    scatter_fraction: float
    scatter_sigma_px: float
    blur_sigma_px: float
    levels_per_photon: float
    read_noise: float  # digital levels
    dose: float  # digital levels an open-beam pixel would get in the abnormal exposure
    clipped_percent: float  # share of the part's pixels that the abnormal exposure saturates


class _Canvas:
    """Pixel coordinates of a frame, and additive/cut-out primitives drawn in their bounding boxes."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.short = min(height, width)
        self.pitch_mm = FRAME_SPAN_MM / self.short
        self.thickness = np.zeros((height, width), np.float32)

    def _box(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)) + 1, self.width), min(int(np.ceil(y1)) + 1, self.height)
        if c1 <= c0 or r1 <= r0:
            return None
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        xs = np.arange(c0, c1, dtype=np.float32)[None, :]
        return (slice(r0, r1), slice(c0, c1)), xs, ys

    def disc(self, cx: float, cy: float, radius: float, height_mm: float, edge: float = 2.0) -> None:
        """A flat-topped boss (cylinder along the beam) with a rounded edge."""
        box = self._box(cx - radius, cy - radius, cx + radius, cy + radius)
        if box:
            window, xs, ys = box
            d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            self.thickness[window] += height_mm * _smoothstep((radius - d) / edge)

    def ring(self, cx: float, cy: float, radius: float, half_width: float, height_mm: float) -> None:
        """A torus-like rim: chord profile across the ring."""
        outer = radius + half_width
        box = self._box(cx - outer, cy - outer, cx + outer, cy + outer)
        if box:
            window, xs, ys = box
            d = np.abs(np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - radius)
            self.thickness[window] += height_mm * _chord(d / half_width)

    def rib(self, p0: tuple[float, float], p1: tuple[float, float], half_width: float, height_mm: float) -> None:
        """A cylindrical rib lying across the beam from p0 to p1: chord profile across it."""
        (x0, y0), (x1, y1) = p0, p1
        box = self._box(
            min(x0, x1) - half_width, min(y0, y1) - half_width, max(x0, x1) + half_width, max(y0, y1) + half_width
        )
        if box:
            window, xs, ys = box
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
            d = np.sqrt((xs - x0 - t * dx) ** 2 + (ys - y0 - t * dy) ** 2)
            self.thickness[window] += height_mm * _chord(d / half_width)

    def hole(self, cx: float, cy: float, radius: float) -> None:
        """A through hole, anti-aliased over one pixel."""
        box = self._box(cx - radius - 1, cy - radius - 1, cx + radius + 1, cy + radius + 1)
        if box:
            window, xs, ys = box
            d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            self.thickness[window] *= np.clip(d - radius + 0.5, 0.0, 1.0)

    def ellipsoid(self, cx: float, cy: float, a: float, b: float, angle: float, depth_scale_mm: float) -> None:
        """Adds ``depth_scale_mm`` times the normalised chord of an ellipsoid (negative: a void)."""
        r = max(a, b)
        box = self._box(cx - r, cy - r, cx + r, cy + r)
        if box:
            window, xs, ys = box
            c, s = np.cos(angle), np.sin(angle)
            u = ((xs - cx) * c + (ys - cy) * s) / a
            v = (-(xs - cx) * s + (ys - cy) * c) / b
            chord_px = 2.0 * min(a, b) * np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))
            self.thickness[window] = np.maximum(self.thickness[window] + depth_scale_mm * chord_px * self.pitch_mm, 0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _chord(d: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - d * d, 0.0, None))


def _wheel(rng: np.random.Generator, canvas: _Canvas) -> None:
    s = canvas.short
    cx = canvas.width / 2 + rng.uniform(-0.03, 0.03) * s
    cy = canvas.height / 2 + rng.uniform(-0.03, 0.03) * s
    radius = rng.uniform(0.40, 0.46) * s
    rim = rng.uniform(0.02, 0.035) * s
    hub = rng.uniform(0.10, 0.16) * s
    canvas.disc(cx, cy, radius, rng.uniform(6, 14))
    canvas.ring(cx, cy, radius - rim, rim, rng.uniform(25, 50))
    canvas.disc(cx, cy, hub, rng.uniform(40, 80), edge=0.01 * s)
    spokes = int(rng.integers(4, 8))
    phase = rng.uniform(0, 2 * np.pi)
    spoke_width = rng.uniform(0.015, 0.03) * s
    spoke_height = rng.uniform(15, 35)
    for k in range(spokes):
        angle = phase + 2 * np.pi * k / spokes
        direction = np.array([np.cos(angle), np.sin(angle)])
        p0 = np.array([cx, cy]) + 0.8 * hub * direction
        p1 = np.array([cx, cy]) + (radius - 1.5 * rim) * direction
        canvas.rib(tuple(p0), tuple(p1), spoke_width, spoke_height)
    if rng.random() < 0.7:  # lightening windows between the spokes
        window_radius = min(rng.uniform(0.03, 0.06) * s, 0.3 * (radius - hub))
        middle = (hub + radius - 2 * rim) / 2
        for k in range(spokes):
            angle = phase + 2 * np.pi * (k + 0.5) / spokes
            canvas.hole(cx + middle * np.cos(angle), cy + middle * np.sin(angle), window_radius)
    bore = rng.uniform(0.03, 0.05) * s
    canvas.hole(cx, cy, bore)
    bolts = int(rng.integers(4, 9))
    bolt_circle = (bore + hub) / 2
    for k in range(bolts):
        angle = phase + 2 * np.pi * k / bolts
        canvas.hole(cx + bolt_circle * np.cos(angle), cy + bolt_circle * np.sin(angle), 0.012 * s)


def _bracket(rng: np.random.Generator, canvas: _Canvas) -> None:
    s, w, h = canvas.short, canvas.width, canvas.height
    half_w, half_h = rng.uniform(0.36, 0.46) * w, rng.uniform(0.32, 0.45) * h
    corner = 0.08 * s
    cx, cy = w / 2, h / 2
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    qx = np.abs(xs - cx) - (half_w - corner)
    qy = np.abs(ys - cy) - (half_h - corner)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)
    inside_depth = corner - outside  # > 0 inside the rounded rectangle, in pixels from its border
    canvas.thickness += rng.uniform(5, 12) * _smoothstep(inside_depth / 2.0)
    flange = rng.uniform(0.03, 0.05) * s
    canvas.thickness += rng.uniform(10, 25) * _chord((inside_depth - flange) / flange) * (inside_depth > 0)

    def inside_point(margin: float) -> tuple[float, float]:
        return (cx + rng.uniform(-1, 1) * (half_w - margin), cy + rng.uniform(-1, 1) * (half_h - margin))

    bosses = [(*inside_point(0.12 * s), rng.uniform(0.035, 0.08) * s) for _ in range(int(rng.integers(2, 6)))]
    for k in range(int(rng.integers(2, 6))):
        a = bosses[k % len(bosses)][:2] if rng.random() < 0.5 else inside_point(0.05 * s)
        b = inside_point(0.05 * s)
        canvas.rib(a, b, rng.uniform(0.012, 0.025) * s, rng.uniform(12, 30))
    for bx, by, radius in bosses:
        canvas.disc(bx, by, radius, rng.uniform(30, 75), edge=0.15 * radius)
    for bx, by, radius in bosses:
        if rng.random() < 0.6:
            canvas.hole(bx, by, rng.uniform(0.3, 0.5) * radius)
    for _ in range(int(rng.integers(0, 4))):
        canvas.hole(*inside_point(0.08 * s), rng.uniform(0.01, 0.03) * s)


def _defect_sites(rng: np.random.Generator, thickness: np.ndarray, count: int, min_mm: float) -> list[tuple[int, int]]:
    """Random sites on material at least ``min_mm`` thick, favouring thick material."""
    step = max(1, int(np.sqrt(thickness.size / 250_000)))
    coarse = thickness[::step, ::step]
    candidates = np.flatnonzero(coarse > min_mm)
    if candidates.size == 0:
        return []
    weights = coarse.ravel()[candidates].astype(np.float64)
    picks = rng.choice(candidates, size=count, p=weights / weights.sum())
    rows, cols = np.unravel_index(picks, coarse.shape)
    return [(int(c * step), int(r * step)) for r, c in zip(rows, cols, strict=True)]


def _add_defects(rng: np.random.Generator, canvas: _Canvas) -> list[Defect]:
    mm = 1.0 / canvas.pitch_mm  # pixels per millimetre
    base = canvas.thickness.copy()
    defects: list[Defect] = []

    def record(kind: str, x0: float, y0: float, x1: float, y1: float, cx: int, cy: int) -> None:
        box = [
            max(int(x0) - 2, 0),
            max(int(y0) - 2, 0),
            min(int(np.ceil(x1)) + 3, canvas.width),
            min(int(np.ceil(y1)) + 3, canvas.height),
        ]
        depth = abs(float(canvas.thickness[cy, cx]) - float(base[cy, cx]))
        defects.append(Defect(kind, box, round(float(base[cy, cx]), 2), round(depth, 2)))

    for cx, cy in _defect_sites(rng, base, int(rng.integers(2, 7)), 12.0):
        r = rng.uniform(1.0, 3.0) * mm
        canvas.ellipsoid(cx, cy, r, r, 0.0, -1.0)
        record("pore", cx - r, cy - r, cx + r, cy + r, cx, cy)
    for cx, cy in _defect_sites(rng, base, int(rng.integers(1, 4)), 12.0):
        a = rng.uniform(0.8, 2.0) * mm
        b = a / rng.uniform(1.0, 2.5)
        canvas.ellipsoid(cx, cy, a, b, rng.uniform(0, np.pi), rng.uniform(1.5, 4.0))  # denser than the alloy
        record("inclusion", cx - a, cy - a, cx + a, cy + a, cx, cy)
    for cx, cy in _defect_sites(rng, base, int(rng.integers(0, 3)), 15.0):
        length = rng.uniform(8, 25) * mm
        segments = int(rng.integers(4, 9))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, segments))
        steps = (length / segments) * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        points = np.vstack([[0.0, 0.0], np.cumsum(steps, axis=0)]) + np.array([cx, cy])
        x0, y0 = np.floor(points.min(0)).astype(int) - 2
        x1, y1 = np.ceil(points.max(0)).astype(int) + 3
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, canvas.width), min(y1, canvas.height)
        if x1 <= x0 or y1 <= y0:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        shift = 4  # sub-pixel vertex positions
        vertices = np.round((points - [x0, y0]) * (1 << shift)).astype(np.int32)
        cv2.polylines(mask, [vertices], False, 255, thickness=1, lineType=cv2.LINE_AA, shift=shift)
        depth = rng.uniform(1.5, 5.0)
        region = canvas.thickness[y0:y1, x0:x1]
        np.maximum(region - depth * mask.astype(np.float32) / 255.0, 0.0, out=region)
        (left, top), (right, bottom) = points.min(0), points.max(0)
        record("crack", left, top, right, bottom, cx, cy)
    return defects


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-variance random field varying over about ``shape / cells`` pixels."""
    aspect = shape[1] / shape[0]
    coarse = rng.normal(size=(cells, max(2, round(cells * aspect)))).astype(np.float32)
    field_ = cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC)
    return (field_ - field_.mean()) / max(float(field_.std()), 1e-6)


def _casting_variation(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Wall-thickness drift (draft, core shift) and a fine surface texture on the material."""
    material = canvas.thickness > 0
    drift = 1.0 + rng.uniform(0.08, 0.2) * np.clip(_smooth_field(rng, canvas.thickness.shape, 6), -2.5, 2.5)
    texture_cells = max(8, canvas.short // 6)
    texture = rng.uniform(0.15, 0.4) * _smooth_field(rng, canvas.thickness.shape, texture_cells)
    canvas.thickness = np.where(material, np.maximum(canvas.thickness * drift + texture, 0.0), 0.0)


def make_part(rng: np.random.Generator, height: int, width: int) -> Part:
    """A random casting as a thickness map with defects."""
    canvas = _Canvas(height, width)
    kind = "wheel" if rng.random() < 0.5 else "bracket"
    (_wheel if kind == "wheel" else _bracket)(rng, canvas)
    _casting_variation(rng, canvas)
    fillet = 0.6 * canvas.short / 1024
    canvas.thickness = cv2.GaussianBlur(canvas.thickness, (0, 0), max(fillet, 0.5)).astype(np.float32)
    defects = _add_defects(rng, canvas)
    return Part(kind, canvas.thickness, defects)


def sample_physics(rng: np.random.Generator, thickness: np.ndarray) -> Physics:
    """Detector and scatter for a part; the dose is set later from the transmission."""
    short = min(thickness.shape)
    return Physics(
        scatter_fraction=rng.uniform(0.005, 0.03),
        scatter_sigma_px=0.05 * short,
        blur_sigma_px=0.8 * short / 1024 + 0.3,
        levels_per_photon=rng.uniform(2.0, 8.0),
        read_noise=rng.uniform(10.0, 40.0),
        dose=1.0,
        clipped_percent=rng.uniform(25.0, 50.0),
    )


def expected_transmission(thickness: np.ndarray, physics: Physics) -> np.ndarray:
    """Noise-free detected signal over the open-beam dose: blurred primary plus scatter.

    Scatter originates where the part interacts with the beam, about ``primary * (1 - primary)``
    (nothing in the open beam, nothing behind opaque material), and reaches the detector
    spread over a wide kernel.
    """
    primary: np.ndarray = np.exp(-MU_PER_MM * thickness).astype(np.float32)
    primary = cv2.GaussianBlur(primary, (0, 0), physics.blur_sigma_px)
    source = primary * (1.0 - primary)
    scale = 256 / min(primary.shape)  # scatter is smooth: blur a small copy, then upsample
    small = cv2.resize(source, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else source
    small = cv2.GaussianBlur(small, (0, 0), physics.scatter_sigma_px * min(scale, 1.0))
    scatter = cv2.resize(small, primary.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return primary + physics.scatter_fraction * scatter


def clipping_dose(transmission: np.ndarray, material: np.ndarray, clipped_percent: float) -> float:
    """The open-beam dose at which ``clipped_percent`` of the part's pixels saturate."""
    values = transmission[material] if material.any() else transmission.ravel()
    return SATURATION / max(
        float(np.percentile(values[:: max(1, values.size // 1_000_000)], 100.0 - clipped_percent)), 1e-9
    )


def expose(rng: np.random.Generator, transmission: np.ndarray, physics: Physics, dose: float) -> np.ndarray:
    """One detector reading in digital levels (float32), before clipping and rounding."""
    photons = rng.poisson(transmission * (dose / physics.levels_per_photon)).astype(np.float32)
    reading = photons * np.float32(physics.levels_per_photon)
    reading += rng.normal(0.0, physics.read_noise, transmission.shape).astype(np.float32)
    return reading


def to_detector(reading: np.ndarray) -> np.ndarray:
    return np.clip(np.round(reading), 0, SATURATION).astype(np.uint16)


def fused_label(
    rng: np.random.Generator, transmission: np.ndarray, material: np.ndarray, physics: Physics
) -> np.ndarray:
    """Fuse an exposure bracket into transmission, then window its logarithm over the part."""
    valid_level = 0.9 * SATURATION
    lowest = min(1 / 16, 0.5 * SATURATION / (physics.dose * float(transmission.max())))
    doses = [physics.dose * lowest * 4.0**k for k in range(12) if lowest * 4.0**k <= 64.0]
    signal = np.zeros(transmission.shape, np.float64)
    exposure = np.zeros(transmission.shape, np.float64)
    for dose in doses:
        reading = to_detector(expose(rng, transmission, physics, dose)).astype(np.float64)
        usable = reading < valid_level
        signal += np.where(usable, reading, 0.0)
        exposure += np.where(usable, dose, 0.0)
    estimate = signal / np.maximum(exposure, 1e-9)
    log_t = np.log(np.maximum(estimate, 1e-6)).astype(np.float32)
    inside = log_t[material] if material.any() else log_t.ravel()
    # Dynamic-range compression as DR post-processing does it: subtract part of the large-scale
    # thickness trend, so thick and thin sections both sit mid-scale and keep their local detail.
    trend = cv2.GaussianBlur(log_t, (0, 0), LABEL_TREND_SIGMA * min(log_t.shape))
    log_t = log_t - LABEL_TREND_WEIGHT * (trend - float(np.median(inside)))
    inside = log_t[material] if material.any() else log_t.ravel()
    low, high = np.percentile(inside[:: max(1, inside.size // 1_000_000)], [0.5, 99.5])
    return unit_to_u16((log_t - low) / max(high - low, 1e-9))


def render(rng: np.random.Generator, part: Part) -> tuple[np.ndarray, np.ndarray, Physics]:
    """The abnormal single exposure and the fused well exposed label of a part."""
    physics = sample_physics(rng, part.thickness_mm)
    material = part.thickness_mm > MATERIAL_MM
    transmission = expected_transmission(part.thickness_mm, physics)
    physics = replace(physics, dose=clipping_dose(transmission, material, physics.clipped_percent))
    abnormal = to_detector(expose(rng, transmission, physics, physics.dose))
    label = fused_label(rng, transmission, material, physics)
    return abnormal, label, physics


def part_rng(seed: int, subset: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, subset, index]))


def generate_one(
    seed: int, subset: int, index: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, Part, Physics]:
    rng = part_rng(seed, subset, index)
    part = make_part(rng, height, width)
    abnormal, label, physics = render(rng, part)
    return abnormal, label, part, physics


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"size must look like 1024x1024 (width x height), got {text!r}") from exc
    if min(width, height) < 64 or width * height > MAX_PIXELS:
        raise ValueError(f"size {text} out of range: at least 64 pixels a side, at most {MAX_PIXELS} pixels")
    return height, width


def _write(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, frame, compression="zlib", compressionargs={"level": 1})


def generate(
    out: Path, pairs: int, train: int, size: tuple[int, int], seed: int, progress: bool = True
) -> dict[str, Any]:
    """Write ``out/test/{input,label,mask}``, ``out/test/defects.json`` and ``out/train/{abnormal,normal}``.

    The training folders are unpaired on purpose: their abnormal and normal frames come from
    different parts (different seed subsets), and none from the test parts.
    """
    out = Path(out)
    height, width = size
    jobs = (
        [(TEST_SET, i) for i in range(pairs)]
        + [(TRAIN_ABNORMAL_SET, i) for i in range(train)]
        + [(TRAIN_NORMAL_SET, i) for i in range(train)]
    )
    annotations: dict[str, dict[str, Any]] = {}
    for subset, index in tqdm(jobs, desc="synth", unit="part", disable=not progress):
        abnormal, label, part, physics = generate_one(seed, subset, index, height, width)
        name = f"part_{subset}{index:05d}.tif"
        if subset == TEST_SET:
            _write(out / "test" / "input" / name, abnormal)
            _write(out / "test" / "label" / name, label)
            # The part's material mask (255 inside), for the evaluation's figures over the part.
            _write(out / "test" / "mask" / name, np.where(part.thickness_mm > MATERIAL_MM, 255, 0).astype(np.uint8))
            annotations[name] = {
                "kind": part.kind,
                "physics": asdict(physics),
                "defects": [asdict(d) for d in part.defects],
            }
        elif subset == TRAIN_ABNORMAL_SET:
            _write(out / "train" / "abnormal" / name, abnormal)
        else:
            _write(out / "train" / "normal" / name, label)
    manifest = {
        "seed": seed,
        "pairs": pairs,
        "train": train,
        "width": width,
        "height": height,
        "generator": "drdaemon.physics",
        "mu_per_mm": MU_PER_MM,
        "frame_span_mm": FRAME_SPAN_MM,
    }
    if pairs:
        (out / "test" / "defects.json").write_text(json.dumps(annotations, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth.json").write_text(json.dumps(manifest, indent=1))
    return manifest
