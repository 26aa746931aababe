"""``python -m trainer.bench``: the projection of the full schedule from measured step times."""

import json
from pathlib import Path

import pytest

from tests.trainer_testkit import one_torch_thread, write_tiny_clip_config
from trainer.bench import main, schedule_counts
from trainer.shared.config import TrainConfig

single_thread = pytest.fixture(autouse=True)(one_torch_thread)


def test_published_schedule_splits_into_prompt_and_enhancer_iterations() -> None:
    # 10 K prompt initialisation + 6 stage-2 rounds of 1 K prompt refinement; the rest trains the enhancer
    assert schedule_counts(TrainConfig()) == {"prompt": 16_000, "enhancer": 34_000}


def test_bench_reports_step_times_and_projection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip_json = write_tiny_clip_config(tmp_path)
    assert (
        main(
            [
                "--clip",
                str(clip_json),
                "--iters",
                "2",
                "--warmup",
                "1",
                "--frame-size",
                "96",
                "--set",
                "data.crop_size=48",
                "--set",
                "data.workers=0",
                "--set",
                "optim.enhancer_batch=2",
                "--set",
                "optim.prompt_batch=2",
                "--set",
                'run.device="cpu"',
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["prompt_s_per_iter"] > 0 and report["enhancer_s_per_iter"] > 0
    expected = (16_000 * report["prompt_s_per_iter"] + 34_000 * report["enhancer_s_per_iter"]) / 3600
    assert report["projected_schedule_hours"] == pytest.approx(expected, abs=0.01)
