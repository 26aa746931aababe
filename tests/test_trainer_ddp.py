"""``torchrun --nproc_per_node=2 -m trainer`` on the CPU (gloo) and the command line itself."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.testkit import REPO
from tests.trainer_testkit import (
    make_data,
    one_torch_thread,
    tiny_config,
    tiny_overrides,
    trainer_command,
    write_tiny_clip_config,
)
from trainer.clip.scheme import Trainer

single_thread = pytest.fixture(autouse=True)(one_torch_thread)


def test_two_process_ddp_run_matches_one_process(tmp_path: Path) -> None:
    abnormal, normal = make_data(tmp_path)
    clip_json = write_tiny_clip_config(tmp_path)
    single = tmp_path / "single.safetensors"
    Trainer(tiny_config(clip_json, tmp_path / "single.run"), abnormal, normal, single).run()

    ddp = tmp_path / "ddp.safetensors"
    sets = [arg for value in tiny_overrides(clip_json, tmp_path / "ddp.run") for arg in ("--set", value)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        trainer_command(abnormal, normal, ddp, *sets, processes=2),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "14 iterations" in proc.stdout  # printed once, by rank 0

    init = Trainer(tiny_config(clip_json, tmp_path / "init.run"), abnormal, normal, tmp_path / "x").enhancer
    start = {k: v.detach() for k, v in init.state_dict().items()}
    a, b = load_file(str(single)), load_file(str(ddp))
    # Each process saw half of every batch and the gradients were averaged: the same trajectory as
    # one process on the whole batch, up to float summation order (which Adam amplifies to a few
    # percent of the distance travelled: changing only the thread count does as much). A process
    # training on its half batch alone ends about as far from the whole-batch run as it travelled.
    moved = torch.sqrt(sum((((a[k] - start[k]) ** 2).sum() for k in a), torch.zeros(())))
    apart = torch.sqrt(sum((((a[k] - b[k]) ** 2).sum() for k in a), torch.zeros(())))
    assert moved > 0
    assert apart < 0.15 * moved, (float(apart), float(moved))


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    ).stdout
    for option in (
        "--abnormal",
        "--normal",
        "--out",
        "--config",
        "--clip",
        "--clip-weights",
        "--resume",
        "--set",
        "--device",
        "--seed",
        "--deterministic",
        "torchrun",
        "local-dir:",
    ):
        assert option in out, option


def test_bad_config_value_exits_with_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        trainer_command("a", "b", "w", "--set", "optim.prompt_batch=0"),
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
    assert proc.returncode == 2 and "prompt_batch" in proc.stderr
