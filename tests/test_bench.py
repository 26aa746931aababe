"""The benchmark tool runs and reports what a reader needs (figures themselves are not asserted)."""

import argparse
import re

from drdaemon.bench.cli import add_bench_arguments, run_bench


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(["--height", "48", "--width", "70", "--repeats", "1", "--frames", "0", *argv])


def test_net_bench_reports_speed_memory_and_half_precision_psnr(capsys):
    assert run_bench(bench_args("--engine", "net", "--device", "cpu", "--scales", "1,4",
                                "--precisions", "float32,half")) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "278,790 with in_ch 3" in out
    for scale in (1, 4):
        assert re.search(rf"s={scale} float32 .*MP/s.*tiled False", out)
        assert re.search(rf"s={scale} bfloat16.*PSNR vs float32 \d+\.\d dB", out)
    assert "faster than s=1" in out


def test_classical_bench_reports_read_enhance_write(capsys):
    assert run_bench(bench_args("--engine", "classical")) == 0
    assert re.search(r"read [\d.]+ ms, enhance [\d.]+ ms, write \(zstd\) [\d.]+ ms", capsys.readouterr().out)


def test_net_bench_prints_half_precision_and_tiler_errors_in_output_levels_on_a_frame_file(capsys, tmp_path):
    import numpy as np
    import tifffile

    frame = tmp_path / "part.tif"
    tifffile.imwrite(frame, (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20))
    assert run_bench(bench_args("--engine", "net", "--device", "cpu", "--scales", "1", "--precisions",
                                "float32,bfloat16", "--frame", str(frame), "--tile-check", "16")) == 0
    out = capsys.readouterr().out
    assert "frame: 60 x 40 (0.00 MP), part.tif" in out
    assert re.search(r"s=1 bfloat16.*PSNR vs float32 [\d.]+ dB, RMS [\d.]+ levels, max \d+ levels", out)
    assert len(re.findall(r"exact tiler, 16 x 16 tiles, (float32|bfloat16): PSNR vs whole frame", out)) == 2
