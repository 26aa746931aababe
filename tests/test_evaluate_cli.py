"""The evaluate command end to end: paired and unpaired data, every method, a real DICOM frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drdaemon import physics as synth
from drdaemon.evaluate.baselines import MethodError, build_method, build_methods
from drdaemon.evaluate.cli import main
from drdaemon.evaluate.report import COLUMNS
from drdaemon.evaluate.run import DataError, evaluate, find_dataset
from drdaemon.io.readers import read_dicom
from tests.dicom_testkit import pydicom_data_file
from tests.testkit import write_weights


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    synth.generate(root, pairs=3, train=0, size=(160, 192), seed=11, progress=False)
    return root


def score(means: dict[str, float | None], key: str) -> float:
    """A mean that the run must have measured."""
    value = means[key]
    assert value is not None, key
    return value


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "method":
            rows[cells[0]] = cells[1:]
    return rows


def test_paired_run_writes_table_scores_and_figure(
    bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--data",
            str(bench),
            "--methods",
            "identity,stretch,gamma:0.6,he,clahe,filtered:median",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "table.md").read_text()
    assert table.splitlines()[0] in printed
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == ["method"] + [h for _, h, _ in COLUMNS]
    rows = _rows(table)
    assert list(rows) == ["identity", "stretch", "gamma 0.6", "he", "clahe", "filtered (median)", "label (reference)"]
    for name in ["identity", "he", "clahe"]:
        psnr, ssim = float(rows[name][0]), float(rows[name][1])
        assert 3 < psnr < 60 and 0 < ssim <= 1
    column = {h: i for i, (_, h, _) in enumerate(COLUMNS)}
    for noise in ["noise gain ↓", "noise part ↓", "noise 2x2 ↓"]:
        assert rows["identity"][column[noise]] == "1.00"  # the input's own noise, by definition
    assert rows["identity"][column["SD Δ%"]] == "0.0"
    # the inspector's figures over the part: the label scores best, every frame has its mask
    assert float(rows["clahe"][column["PSNR part ↑"]]) > float(rows["clahe"][column["PSNR ↑"]])
    assert 0 <= float(rows["identity"][column["visible ↑"]]) <= 1
    assert float(rows["label (reference)"][column["visible ↑"]]) > 0.5
    assert (tmp_path / "table.csv").read_text().splitlines()[0].startswith("method,psnr,ssim")
    assert rows["label (reference)"][0] == "—"  # no PSNR of the label against itself
    assert "LPIPS" in table and "Mean over 3 frame(s)" in table
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert len(scores["frames"]) == 3
    figure = tmp_path / "figure.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000


def test_methods_score_differently_and_the_label_is_better_exposed(bench: Path, tmp_path: Path) -> None:
    result = evaluate(bench / "test", ["identity", "clahe", "he"], tmp_path, progress=False)
    by_label = {s.label: s.means for s in result.summaries}
    assert by_label["clahe"]["psnr"] != by_label["he"]["psnr"]
    # Equalisation spends the whole 8-bit scale: more spread than the input's saturated frame.
    assert score(by_label["he"], "sd") > 0
    assert score(by_label["label (reference)"], "ie") > score(by_label["identity"], "ie")


def test_unpaired_folder_gets_no_reference_metrics_only(bench: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted((bench / "test" / "input").iterdir())[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    result = evaluate(folder, ["identity", "clahe"], tmp_path / "out", progress=False)
    for summary in result.summaries:
        assert summary.means["psnr"] is None and summary.means["ssim"] is None
        assert summary.means["ie"] is not None
    assert "no PSNR" in result.table
    assert result.figure_path is not None and result.figure_path.is_file()


def test_bad_data_and_methods_are_clear_errors(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataError, match="no frames"):
        find_dataset(tmp_path)
    for text, message in [
        ("sharpen", "unknown method"),
        ("gamma:x", "number"),
        ("filtered:bilateral", "denoiser"),
        ("pipeline:sharp", "presets are"),
        (f"net:{tmp_path / 'none.safetensors'}", "no weights file"),
    ]:
        with pytest.raises(MethodError, match=message):
            build_method(text)
    with pytest.raises(MethodError, match="twice"):
        build_methods(["clahe", "classical"])
    assert main(["--data", str(bench), "--methods", "sharpen", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    with pytest.raises(DataError, match="figure-frame"):
        evaluate(bench, ["identity"], tmp_path, figure_frame="absent.tif", progress=False)


def test_filtered_pipeline_denoises_before_equalising() -> None:
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(5000, 60000, 128), (128, 1))
    frame = np.clip(ramp + rng.normal(0, 800, ramp.shape), 0, 65535).astype(np.uint16)
    from drdaemon.engines import ClassicalEngine
    from drdaemon.evaluate.quality import noise_sigma

    clahe = ClassicalEngine(method="classical").enhance(frame).pixels
    for denoiser in ("nlm", "median", "gaussian"):
        filtered = build_method(f"filtered:{denoiser}").engine.enhance(frame).pixels
        assert filtered.dtype == np.uint16 and filtered.shape == frame.shape
        assert noise_sigma(filtered) < 0.8 * noise_sigma(clahe)


def test_net_method_runs_the_learned_engine(bench: Path, tmp_path: Path) -> None:
    pytest.importorskip("drdaemon.engines.net")
    weights = tmp_path / "tiny" / "weights.safetensors"
    weights.parent.mkdir()
    write_weights(weights)
    result = evaluate(bench, ["identity", f"net:{weights}"], tmp_path / "out", device="cpu", limit=1, progress=False)
    net = next(s for s in result.summaries if s.label.startswith("net"))
    assert net.frames == 1 and net.means["psnr"] is not None


def test_real_cr_frame_from_pydicom_data_end_to_end(tmp_path: Path) -> None:
    """RG1_UNCR: a 15-bit MONOCHROME1 computed radiograph, a real frame with real noise."""
    import pydicom

    source = pydicom_data_file("RG1_UNCR.dcm")
    raw = pydicom.dcmread(source).pixel_array
    frame = read_dicom(source)
    assert frame.dtype == np.uint16 and frame.shape == raw.shape
    # MONOCHROME1: the darkest stored value is the brightest pixel after reading.
    assert frame.flat[np.argmin(raw)] == frame.max() and frame.flat[np.argmax(raw)] == frame.min()
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "RG1_UNCR.dcm").write_bytes(source.read_bytes())
    result = evaluate(folder, ["identity", "clahe", "filtered:median"], tmp_path / "out", progress=False)
    by_label = {s.label: s.means for s in result.summaries}
    assert by_label["identity"]["noise_gain"] == pytest.approx(1.0)
    assert score(by_label["clahe"], "noise_gain") > score(by_label["filtered (median)"], "noise_gain")
    assert result.figure_path is not None and result.figure_path.is_file()


def test_tiff_and_dicom_go_through_the_same_loader(tmp_path: Path) -> None:
    from drdaemon.io.readers import read_pixels

    frame = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    tifffile.imwrite(tmp_path / "a.tif", frame)
    assert np.array_equal(read_pixels(tmp_path / "a.tif"), frame)
    # A 15-bit DICOM frame comes back spread over the 16 bits, as read_dicom gives it.
    source = pydicom_data_file("RG1_UNCR.dcm")
    pixels = read_pixels(source)
    assert np.array_equal(pixels, read_dicom(source)) and pixels.max() > 32767


def test_the_histogram_shows_a_saturated_frame_spike_at_255_and_says_its_share() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from drdaemon.evaluate.report import draw_histogram

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 40000, (100, 100)).astype(np.uint16)  # levels 0..156, none near 255
    frame[:, :72] = 65535  # 72 % saturated
    fig, ax = plt.subplots()
    try:
        shares = draw_histogram(ax, frame)
        assert shares[255] == pytest.approx(0.72)
        # A bar stands at 255 up to its share, whatever the empty levels before it.
        bars = [bar for bar in ax.patches if isinstance(bar, Rectangle)]
        assert len(bars) == len(ax.patches)  # a bar chart: rectangles only
        tops = {round(bar.get_x() + bar.get_width() / 2): bar.get_y() + bar.get_height() for bar in bars}
        assert tops[255] == pytest.approx(0.72) and 200 not in tops
        assert ax.get_ylim()[1] >= 0.72
        assert "255: 72%" in [text.get_text() for text in ax.texts]
    finally:
        plt.close(fig)
