"""The benchmark tool runs and reports what a reader needs (figures themselves are not asserted)."""

import argparse
import re
from pathlib import Path

import pytest

from drdaemon.bench.cli import add_bench_arguments, run_bench


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(["--height", "48", "--width", "70", "--repeats", "1", "--frames", "0", *argv])


def test_net_bench_reports_speed_memory_and_half_precision_psnr(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_bench(bench_args("--engine", "net", "--device", "cpu", "--scales", "1,4", "--precisions", "float32,half"))
        == 0
    )
    out = capsys.readouterr().out
    assert "machine:" in out and "278,790 with in_ch 3" in out
    for scale in (1, 4):
        assert re.search(rf"s={scale} float32 .*MP/s.*tiled False", out)
        assert re.search(rf"s={scale} bfloat16.*PSNR vs float32 \d+\.\d dB", out)
    assert "faster than s=1" in out


def test_classical_bench_reports_read_enhance_write(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench(bench_args("--engine", "classical")) == 0
    assert re.search(r"read [\d.]+ ms, enhance [\d.]+ ms, write \(lzw\) [\d.]+ ms", capsys.readouterr().out)


def test_compression_table_has_a_row_per_option_with_its_tiff_code(capsys: pytest.CaptureFixture[str]) -> None:
    from drdaemon.defaults import COMPRESSIONS

    assert run_bench(bench_args("--compression-table", "--height", "96", "--width", "128")) == 0
    out = capsys.readouterr().out
    codes = {"none": 1, "lzw": 5, "adobe_deflate": 8, "deflate": 32946, "zstd": 50000}
    assert set(codes) == set(COMPRESSIONS)
    for name, code in codes.items():
        assert re.search(
            rf"^\| `{name}`( \(default\))? \| {code} \| \d+ \| \d+ \| \d+ \| [\d.]+ \| \d+% \|$", out, re.M
        ), name
    assert "| `lzw` (default) | 5 |" in out and "| `none` | 1 |" in out


def test_pipeline_bench_prints_each_steps_time_and_non_local_means_apart(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench(bench_args("--engine", "pipeline", "--preset", "filtered-median")) == 0
    out = capsys.readouterr().out
    for key in ("step0_normalise", "step1_median", "step2_clahe", "step3_normalise", "pipeline_output"):
        assert re.search(rf"  {key} +[\d.]+ ms", out), key
    assert re.search(r"enhance \(whole call\) +[\d.]+ ms = [\d.]+ MP/s", out)
    assert re.search(r"OpenCV 2 threads, OMP_NUM_THREADS=\S+, load average [\d.]+ [\d.]+ [\d.]+", out)
    assert re.search(r"non-local means apart .*: [\d.]+ s = [\d.]+ MP/s", out)


def test_net_bench_prints_half_precision_and_tiler_errors_in_output_levels_on_a_frame_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import numpy as np
    import tifffile

    frame = tmp_path / "part.tif"
    tifffile.imwrite(frame, (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20))
    assert (
        run_bench(
            bench_args(
                "--engine",
                "net",
                "--device",
                "cpu",
                "--scales",
                "1",
                "--precisions",
                "float32,bfloat16",
                "--frame",
                str(frame),
                "--tile-check",
                "16",
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "frame: 60 x 40 (0.00 MP), part.tif" in out
    assert re.search(r"s=1 bfloat16.*PSNR vs float32 [\d.]+ dB, RMS [\d.]+ levels, max \d+ levels", out)
    assert len(re.findall(r"exact tiler, 16 x 16 tiles, (float32|bfloat16): PSNR vs whole frame", out)) == 2


def test_identity_bench_breaks_the_host_cost_down_by_stage_and_thread(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench(bench_args("--engine", "identity", "--readers", "2", "--writers", "3")) == 0
    out = capsys.readouterr().out
    for stage in ("read", "hash input", "window", "copies", "encode", "hash output", "write", "fsync", "sidecar"):
        assert re.search(rf"{stage} [\d.]+", out), stage
    assert re.search(r"readers [\d.]+ ms / 2 = [\d.]+ ms per lane", out)
    assert re.search(r"writers [\d.]+ ms / 3 = [\d.]+ ms per lane", out)
    assert re.search(r"host ceiling with 2 reader\(s\), 1 worker\(s\), 3 writer\(s\): [\d.]+ frames/s", out)


def test_host_ceiling_is_set_by_the_slowest_stage_per_thread() -> None:
    from drdaemon.bench.host import HostCosts

    costs = HostCosts({"read": 0.05, "window": 0.01, "copies": 0.01, "encode": 0.12, "fsync": 0.03})
    assert costs.by_thread() == pytest.approx({"reader": 0.06, "worker": 0.01, "writer": 0.15})
    assert costs.frame_rate_ceiling(readers=1, workers=1, writers=1) == pytest.approx(1 / 0.15)  # the writer
    assert costs.frame_rate_ceiling(readers=1, workers=1, writers=6) == pytest.approx(1 / 0.06)  # now the reader
