"""The evaluation: run methods over a folder of frames, score, tabulate, plot (``python -m drdaemon.evaluate``).

Data layouts:

* **paired**: ``DIR/input/`` and ``DIR/label/`` with the same file names (the synthetic
  benchmark's ``test/`` folder; ``DIR`` may also be the benchmark's root). All metrics.
* **unpaired**: frames directly in ``DIR`` (or in ``DIR/input/``). No-reference metrics only.

Frames are whatever the daemon reads (TIFF, PNG, DICOM/DICONDE, ``.his``, and ``.raw`` with the
``[input.raw]`` layout of ``--config``), through the daemon's reader. An optional ``defects.json`` beside
``input/`` (as the generator writes it) tells the figure where to zoom.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from drdaemon.config import EngineConfig
from drdaemon.evaluate.baselines import build_methods
from drdaemon.evaluate.inspection import VISIBLE_CNR, VISIBLE_LEVELS, PartScores, part_scores
from drdaemon.evaluate.quality import (
    NIQE_NOTE,
    FrameScores,
    LpipsMetric,
    display_u8,
    information_entropy,
    load_lpips,
    measured_coefficients,
    noise_sigma,
    score_frame,
    standard_deviation,
)
from drdaemon.evaluate.report import (
    MethodSummary,
    comparison_figure,
    csv_table,
    markdown_table,
    pick_crop,
    pick_defect,
    summarise,
)
from drdaemon.io.limits import DEFAULT_LIMITS, ReadLimits
from drdaemon.io.readers import FRAME_FORMATS, ReaderRegistry, read_pixels, recognised_file
from drdaemon.kernels.tone import to_u16


class DataError(ValueError):
    """A data folder the evaluation cannot use; the message says what it expected."""


@dataclass
class Dataset:
    inputs: list[Path]
    labels: list[Path] | None  # same order as inputs; None when unpaired
    defects: dict[str, dict[str, Any]]
    masks: list[Path] | None = None  # the part's material masks (``mask/``, as the generator writes them)

    @property
    def paired(self) -> bool:
        return self.labels is not None


def _frames_in(folder: Path, formats: ReaderRegistry) -> list[Path]:
    """Files with a suffix of ``formats``, and files without a suffix that a format recognises (DICOM)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (formats.takes_suffix(p.name) or (not p.suffix and recognised_file(p, formats)))
    )


def find_dataset(root: Path, formats: ReaderRegistry = FRAME_FORMATS) -> Dataset:
    """Work out the layout of ``root`` (see the module docstring); frames are the files of ``formats``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder")
    if (root / "test" / "input").is_dir() and not (root / "input").is_dir():
        root = root / "test"
    folder = root / "input" if (root / "input").is_dir() else root
    inputs = _frames_in(folder, formats)
    if not inputs:
        raise DataError(f"--data {root}: no frames ({', '.join(formats.suffixes())}) in {folder}")
    labels = None
    if (root / "label").is_dir():
        labels = [root / "label" / p.name for p in inputs]
        missing = [p.name for p in labels if not p.is_file()]
        if missing:
            raise DataError(f"--data {root}: label/ lacks {len(missing)} frame(s) of input/, e.g. {missing[0]}")
    defects_file = root / "defects.json"
    defects = json.loads(defects_file.read_text()) if defects_file.is_file() else {}
    masks = None
    if labels is not None and (root / "mask").is_dir():
        masks = [root / "mask" / p.name for p in inputs]
        missing = [p.name for p in masks if not p.is_file()]
        if missing:
            raise DataError(f"--data {root}: mask/ lacks {len(missing)} frame(s) of input/, e.g. {missing[0]}")
    return Dataset(inputs, labels, defects, masks)


@dataclass
class EvaluationResult:
    summaries: list[MethodSummary]
    table: str
    table_path: Path
    figure_path: Path | None
    scores_path: Path


def evaluate(
    data: Path,
    method_texts: list[str],
    out: Path,
    device: str = "auto",
    precision: str = "float32",
    limit: int | None = None,
    figure_frame: str | None = None,
    progress: bool = True,
    limits: ReadLimits = DEFAULT_LIMITS,
    engine: EngineConfig | None = None,
) -> EvaluationResult:
    """Score every method on every frame, then write ``table.md``, ``scores.json`` and ``figure.png``.

    ``limits`` are the daemon's ``[input]`` (size limits and the ``.raw`` layout); ``engine`` its
    ``[engine]``, whose ``[engine.pipeline]`` the ``pipeline`` method runs.
    """
    dataset = find_dataset(data)
    methods = build_methods(method_texts, device, precision, engine=engine)
    lpips_metric, lpips_note = load_lpips() if dataset.paired else (None, "")
    inputs = dataset.inputs[:limit] if limit else dataset.inputs
    labels = dataset.labels[: len(inputs)] if dataset.labels else None
    figure_name = figure_frame or _default_figure_frame(inputs, dataset.defects)
    if figure_name not in {p.name for p in inputs}:
        raise DataError(f"--figure-frame {figure_name}: not among the evaluated frames")

    per_method: dict[str, list[FrameScores]] = {m.label: [] for m in methods}
    seconds: dict[str, list[float]] = {m.label: [] for m in methods}
    label_scores: list[FrameScores] = []
    per_frame: dict[str, dict[str, dict[str, Any]]] = {}
    panels: list[tuple[str, np.ndarray]] = []
    crop = defect = None
    bar = tqdm(total=len(inputs) * len(methods), desc="evaluate", unit="run", disable=not progress)
    for index, path in enumerate(inputs):
        frame = read_pixels(path, limits)
        label = to_u16(read_pixels(labels[index], limits)) if labels else None
        input_u16 = to_u16(frame)
        mask = read_pixels(dataset.masks[index], limits) > 0 if dataset.masks else None
        context = FrameContext(input_u16, label, mask, dataset.defects.get(path.name, {}).get("defects", []))
        keep = path.name == figure_name
        per_frame[path.name] = {}
        if keep and not any(m.label == "identity" for m in methods):
            panels.append(("input", to_u16(frame)))
        for method in methods:
            start = time.perf_counter()
            output = method.engine.enhance(frame).pixels
            seconds[method.label].append(time.perf_counter() - start)
            scores = context.score(output, lpips_metric)
            per_method[method.label].append(scores)
            per_frame[path.name][method.label] = asdict(scores)
            if keep:
                panels.append(("input (identity)" if method.label == "identity" else method.label, output))
            bar.update()
        if label is not None:
            scores = context.score(label, is_label=True)
            label_scores.append(scores)
            per_frame[path.name]["label"] = asdict(scores)
            if keep:
                panels.append(("label", label))
        if keep:
            defect = pick_defect(dataset.defects.get(path.name, {}).get("defects", []), to_u16(frame))
            crop = pick_crop(frame.shape, defect, to_u16(frame))
    bar.close()

    summaries = [summarise(m.label, per_method[m.label], seconds[m.label]) for m in methods]
    if label_scores:
        summaries.append(summarise("label (reference)", label_scores))
    notes = _notes(len(inputs), dataset.paired, lpips_note, summaries)
    table = markdown_table(summaries, notes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "table.md"
    table_path.write_text(table, encoding="utf-8")
    (out / "table.csv").write_text(csv_table(summaries), encoding="utf-8")
    scores_path = out / "scores.json"
    scores_path.write_text(
        json.dumps({"data": str(data), "methods": method_texts, "frames": _finite(per_frame)}, indent=1)
    )
    figure_path = None
    if panels and crop is not None:
        title = f"{figure_name}: zoom box in orange" + (", defect box dotted" if defect else "")
        figure_path = comparison_figure(out / "figure.png", panels, crop, title=title, defect=defect)
    return EvaluationResult(summaries, table, table_path, figure_path, scores_path)


@dataclass
class FrameContext:
    """What every method's output on one frame is scored against."""

    input_u16: np.ndarray
    label: np.ndarray | None
    mask: np.ndarray | None
    defects: list[dict[str, Any]]

    def __post_init__(self) -> None:
        self.input_sigma = noise_sigma(self.input_u16)
        self.input_measured = measured_coefficients(self.input_u16)
        shown = display_u8(self.input_u16)
        self.input_sd, self.input_ie = standard_deviation(shown), information_entropy(shown)

    def score(self, output: np.ndarray, lpips: LpipsMetric | None = None, is_label: bool = False) -> FrameScores:
        """Every metric of ``output``: the published ones, the inspector's, and SD / IE change.

        ``is_label``: ``output`` is the label itself, so no figure compares it with the label
        (they would be perfect by definition); its defect visibility is still measured.
        """
        reference = None if is_label else self.label
        scores = score_frame(output, self.input_sigma, reference, lpips, self.input_measured)
        part = part_scores(output, self.input_u16, self.label, self.mask, self.defects)
        if is_label:
            part = replace(part, psnr_part=None, ssim_part=None)
        add_part_scores(scores, part)
        scores.sd_change = _change(scores.sd, self.input_sd)
        scores.ie_change = _change(scores.ie, self.input_ie)
        return scores


def _change(value: float, reference: float) -> float:
    """Relative change of ``value`` from ``reference`` in percent (NaN when the reference is 0)."""
    return 100.0 * (value - reference) / reference if reference else float("nan")


def add_part_scores(scores: FrameScores, part: PartScores) -> None:
    """Copy the inspector's figures (:mod:`drdaemon.evaluate.inspection`) into a frame's scores."""
    scores.psnr_part, scores.ssim_part = part.psnr_part, part.ssim_part
    scores.noise_gain_part, scores.noise_gain_2x2 = part.noise_gain_part, part.noise_gain_2x2
    scores.visible_share, scores.defect_levels, scores.defect_cnr = (
        part.visible_share,
        part.defect_levels,
        part.defect_cnr,
    )


def _default_figure_frame(inputs: list[Path], defects: dict[str, dict[str, Any]]) -> str:
    for path in inputs:
        if defects.get(path.name, {}).get("defects"):
            return path.name
    return inputs[0].name


def _notes(frames: int, paired: bool, lpips_note: str, summaries: list[MethodSummary]) -> list[str]:
    notes = [f"Mean over {frames} frame(s)."]
    if paired:
        notes.append(f"PSNR and SSIM on the 16-bit frames against the label (data range 65535); LPIPS: {lpips_note}.")
    else:
        notes.append("Unpaired data: no label, so no PSNR, SSIM or LPIPS.")
    notes.append(
        "AG, IE, SD, SF and NRSS on the 8-bit display rendition (x / 257); noise gain = wavelet-MAD "
        "noise sigma of the output over that of the input, both on the unit rendition (x / 65535)."
    )
    notes.append(
        "The inspector's figures (drdaemon.evaluate.inspection): PSNR part and SSIM part against the label "
        "after the least-squares affine map of output to label, over the part's mask (the whole frame "
        "where the data has no mask/); noise part and noise 2x2: noise gain inside the part at full "
        "resolution and after 2 x 2 binning; visible: mean per-frame share of the defect boxes with a "
        f"contrast of at least {VISIBLE_LEVELS:g} display levels and a CNR of at least {VISIBLE_CNR:g}; "
        "defect levels and defect CNR: per-frame medians; SD Δ% and IE Δ%: change from the input's."
    )
    notes.append(NIQE_NOTE)
    timed = [f"{s.label} {s.seconds_per_frame:.2f}" for s in summaries if s.seconds_per_frame is not None]
    if timed:
        notes.append("Seconds per frame on this machine (enhancement only): " + ", ".join(timed) + ".")
    return notes


def _finite(value: object) -> object:
    """NaN and infinity as null: JSON has no spelling for them."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
