"""The evaluation's outputs: a markdown table in the published layout and a comparison figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drdaemon.evaluate.quality import FrameScores, display_u8

#: Columns of the table: metric field, header, decimals. The published layout plus noise gain.
#: (metric, header, decimals) of the table, from the metrics' own fields.
COLUMNS: list[tuple[str, str, int]] = FrameScores.columns()


@dataclass
class MethodSummary:
    """Means over the evaluated frames of one method."""

    label: str
    means: dict[str, float | None]
    frames: int
    seconds_per_frame: float | None = None


def summarise(label: str, scores: list[FrameScores], seconds: list[float] | None = None) -> MethodSummary:
    """Mean of each metric over the frames that have it (None when no frame has it)."""
    means: dict[str, float | None] = {}
    for name in FrameScores.names():
        values = [getattr(s, name) for s in scores]
        values = [v for v in values if v is not None and not math.isnan(v)]
        means[name] = float(np.mean(values)) if values else None
    timing = float(np.mean(seconds)) if seconds else None
    return MethodSummary(label, means, len(scores), timing)


def _cell(value: float | None, decimals: int) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{decimals}f}"


def markdown_table(summaries: list[MethodSummary], notes: Sequence[str] = ()) -> str:
    """The table, one row per method, followed by its notes as a bullet list."""
    header = "| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {s.label} | " + " | ".join(_cell(s.means[f], d) for f, _, d in COLUMNS) + " |" for s in summaries]
    text = "\n".join([header, rule, *rows])
    if notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in notes)
    return text + "\n"


def csv_table(summaries: list[MethodSummary]) -> str:
    """The table as CSV: one row per method, every metric by its field name, empty where absent."""
    names = [f for f, _, _ in COLUMNS]
    lines = [",".join(["method", *names, "seconds_per_frame", "frames"])]
    for s in summaries:
        cells = ["" if s.means[f] is None else f"{s.means[f]:.6g}" for f in names]
        timing = "" if s.seconds_per_frame is None else f"{s.seconds_per_frame:.4g}"
        label = '"' + s.label.replace('"', '""') + '"'
        lines.append(",".join([label, *cells, timing, str(s.frames)]))
    return "\n".join(lines) + "\n"


Box = tuple[int, int, int, int]  # x0, y0, x1, y1


def pick_defect(defects: list[dict[str, Any]], frame: np.ndarray) -> Box | None:
    """The defect that best shows what a bad exposure hides: a compact one (pore or
    inclusion; a one-pixel crack is hard to see at figure scale), large, of high contrast
    (``depth_mm`` when the annotations have it) and lying where the input is dark or saturated."""
    if not defects:
        return None

    def hidden_and_large(defect: dict[str, Any]) -> float:
        x0, y0, x1, y1 = defect["box"]
        shown = display_u8(frame[y0:y1, x0:x1])
        badly_exposed = float(np.mean((shown < 40) | (shown > 250)))
        compact = 1.0 if defect.get("kind") != "crack" else 0.1
        contrast = defect.get("depth_mm", 1.0)
        return compact * contrast * np.sqrt((x1 - x0) * (y1 - y0)) * (0.1 + badly_exposed)

    return tuple(max(defects, key=hidden_and_large)["box"])


def pick_crop(shape: tuple[int, int], defect: Box | None, frame: np.ndarray) -> Box:
    """A square (x0, y0, x1, y1) to zoom into: around ``defect`` (a few times its size),
    else around the darkest smooth region of the input."""
    height, width = shape
    side = max(64, min(height, width) // 10)
    if defect is not None:
        x0, y0, x1, y1 = defect
        side = int(np.clip(6 * max(x1 - x0, y1 - y0), 64, max(64, min(height, width) // 5)))
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    else:
        import cv2

        small = cv2.resize(frame.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
        row, col = np.unravel_index(np.argmin(cv2.GaussianBlur(small, (0, 0), 2)), small.shape)
        cx, cy = int((col + 0.5) * width / 64), int((row + 0.5) * height / 64)
    side = min(side, height, width)
    left = int(np.clip(cx - side // 2, 0, width - side))
    top = int(np.clip(cy - side // 2, 0, height - side))
    return left, top, left + side, top + side


def _thumbnail(frame: np.ndarray, max_side: int = 384) -> np.ndarray:
    import cv2

    shown = display_u8(frame)
    scale = max_side / max(shown.shape)
    return cv2.resize(shown, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else shown


#: The lowest share the log-scale histogram shows (one pixel in a million).
HISTOGRAM_FLOOR = 1e-6
#: An end level (0 or 255) holding at least this share of the pixels is labelled with it.
CLIPPED_LABEL_SHARE = 0.01


def histogram_shares(frame: np.ndarray) -> np.ndarray:
    """The share of the pixels at each of the 256 display levels (:func:`display_u8`)."""
    counts = np.bincount(display_u8(frame).ravel(), minlength=256)
    return counts / counts.sum()


def draw_histogram(ax: Any, frame: np.ndarray) -> np.ndarray:
    """The 8-bit histogram on a log scale, one bar per occupied level; returns the shares drawn.

    Bars from the floor, for occupied levels only: a filled outline over empty levels is
    undefined on a log scale, and matplotlib dropped the part after them, so a spike at 255
    (a saturated frame) vanished. Clipped ends (0, 255) holding a visible share are labelled
    with it, since a log scale makes 72 % and 7 % look alike.
    """
    shares = histogram_shares(frame)
    levels = np.flatnonzero(shares)
    ax.bar(
        levels,
        shares[levels] - HISTOGRAM_FLOOR,
        width=1.0,
        bottom=HISTOGRAM_FLOOR,
        color="0.3",
        edgecolor="0.3",
        linewidth=0.6,
    )
    ax.set_yscale("log")
    ax.set_ylim(HISTOGRAM_FLOOR, 1)
    ax.set_xlim(-2, 258)
    ax.tick_params(labelsize=6)
    for level, align in ((0, "left"), (255, "right")):
        if shares[level] >= CLIPPED_LABEL_SHARE:
            ax.annotate(
                f"{level}: {shares[level]:.0%}",
                (level, shares[level]),
                xytext=(0, 2),
                textcoords="offset points",
                ha=align,
                va="bottom",
                fontsize=6,
                color="tab:red",
            )
    return shares


def comparison_figure(
    path: Path, panels: list[tuple[str, np.ndarray]], crop: Box, title: str = "", defect: Box | None = None
) -> Path:
    """Each panel's frame, a zoom on ``crop`` (``defect`` outlined) and its 8-bit histogram, in columns.

    ``panels`` are (title, uint16 frame) in column order: input, methods, label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    columns = len(panels)
    fig, axes = plt.subplots(
        3, columns, figsize=(1.75 * columns, 5.4), squeeze=False, gridspec_kw={"height_ratios": [1, 1, 0.6]}
    )
    x0, y0, x1, y1 = crop
    for col, (name, frame) in enumerate(panels):
        thumb = _thumbnail(frame)
        scale = thumb.shape[1] / frame.shape[1]
        ax = axes[0, col]
        ax.imshow(thumb, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.add_patch(
            Rectangle(
                (x0 * scale, y0 * scale),
                (x1 - x0) * scale,
                (y1 - y0) * scale,
                fill=False,
                edgecolor="tab:orange",
                linewidth=1,
            )
        )
        ax.set_title(name, fontsize=8)
        axes[1, col].imshow(display_u8(frame[y0:y1, x0:x1]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if defect is not None:
            dx0, dy0, dx1, dy1 = defect
            axes[1, col].add_patch(
                Rectangle(
                    (dx0 - x0 - 0.5, dy0 - y0 - 0.5),
                    dx1 - dx0,
                    dy1 - dy0,
                    fill=False,
                    edgecolor="tab:orange",
                    linewidth=0.8,
                    linestyle=":",
                )
            )
        for ax in axes[:2, col]:
            ax.set_xticks([])
            ax.set_yticks([])
        hist = axes[2, col]
        draw_histogram(hist, frame)
        if col:
            hist.set_yticklabels([])
    axes[1, 0].set_ylabel("zoom", fontsize=8)
    axes[2, 0].set_ylabel("histogram (8-bit)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
