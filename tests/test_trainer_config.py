"""Training config: the method's defaults (docs/method.md), TOML file, --set overrides, the documented example, the schedule."""

import re
from pathlib import Path

import pytest

from tests.testkit import REPO
from trainer.shared.config import TrainConfig, TrainConfigError, load_config
from trainer.shared.schedule import PhaseKind, phase_at


def test_defaults_are_the_published_settings() -> None:
    cfg = TrainConfig()
    assert (cfg.loss.m0, cfg.loss.m1, cfg.loss.m2) == (0.9, 0.2, 0.2)
    assert (cfg.loss.beta, cfg.loss.omega) == (0.9, 0.8)
    assert cfg.loss.alpha == [1, 1, 1, 1, 0.5] and cfg.loss.gamma == [1, 1.5, 1.5, 1, 0]
    s = cfg.schedule
    assert (s.total_iters, s.warmup_iters, s.prompt_init_iters) == (50_000, 1_000, 10_000)
    o = cfg.optim
    assert (o.prompt_lr, o.enhancer_lr, o.prompt_batch, o.enhancer_batch, o.betas) == (5e-6, 2e-5, 8, 16, (0.9, 0.99))
    assert cfg.data.crop_size == 512 and cfg.prompts.n_tokens == 16
    assert (cfg.clip.model, cfg.clip.weights) == ("RN101-quickgelu", "openai")
    assert cfg.enhancer.in_ch == 1


def test_file_then_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text("[schedule]\ntotal_iters = 30000\n[clip]\nmodel = 'RN50'\n")
    cfg = load_config(toml, ["schedule.total_iters=20000", "loss.gamma=[0, 1, 1, 1, 0]", "clip.weights=none"])
    assert cfg.schedule.total_iters == 20000
    assert cfg.clip.model == "RN50" and cfg.clip.weights == "none"
    assert cfg.loss.gamma == [0, 1, 1, 1, 0]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("schedule.total_iterz=5", "total_iterz"),
        ("loss.alpha=[1, 1]", "alpha"),
        ("enhancer.in_ch=3", "in_ch"),
        ("enhancer.illumination_scale=3", "illumination_scale"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_values_are_refused_by_name(override: str, needle: str) -> None:
    with pytest.raises(TrainConfigError, match=needle):
        load_config(None, [override])


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_every_illumination_scale_is_trainable(scale: int) -> None:
    assert load_config(None, [f"enhancer.illumination_scale={scale}"]).enhancer.illumination_scale == scale


def test_example_file_documents_every_key_with_the_defaults() -> None:
    example = REPO / "train.example.toml"
    cfg = load_config(example)
    assert cfg == TrainConfig()
    text = example.read_text()
    for section, model in TrainConfig().model_dump().items():
        assert f"[{section}]" in text
        for key in model:
            line = next((ln for ln in text.splitlines() if re.match(rf"(# )?{key} =", ln)), None)
            assert line is not None, f"{section}.{key} missing from train.example.toml"
            index = text.splitlines().index(line)
            assert text.splitlines()[index - 1].startswith("#"), f"{section}.{key} has no comment"


def test_schedule_phases_in_order() -> None:
    s = load_config(
        None,
        [
            "schedule.total_iters=20",
            "schedule.prompt_init_iters=3",
            "schedule.warmup_iters=2",
            "schedule.enhancer_iters=4",
            "schedule.prompt_round_iters=2",
            "schedule.enhancer_round_iters=3",
        ],
    ).schedule
    labels = [phase_at(i, s).label for i in range(20)]
    assert labels == (
        ["prompt_init"] * 3
        + ["warmup"] * 2
        + ["enhance"] * 4
        + ["prompt_rank#1"] * 2
        + ["enhance#1"] * 3
        + ["prompt_rank#2"] * 2
        + ["enhance#2"] * 3
        + ["prompt_rank#3"]
    )
    last = phase_at(19, s)
    assert last.kind is PhaseKind.PROMPT_RANK and last.end == 20
    with pytest.raises(ValueError):
        phase_at(20, s)


def test_published_schedule_has_the_published_lengths() -> None:
    s = TrainConfig().schedule
    kinds: dict[PhaseKind, int] = {}
    for i in range(0, s.total_iters, 500):  # every phase is a multiple of 500 long
        kinds[phase_at(i, s).kind] = kinds.get(phase_at(i, s).kind, 0) + 500
    assert kinds[PhaseKind.PROMPT_INIT] == 10_000 and kinds[PhaseKind.WARMUP] == 1_000
    assert sum(kinds.values()) == 50_000


def test_a_schedule_key_with_the_cyclegan_scheme_names_the_keys_that_set_its_budget() -> None:
    with pytest.raises(TrainConfigError) as caught:
        load_config(None, ["run.scheme=cyclegan", "schedule.total_iters=12"])
    message = str(caught.value)
    assert "schedule.* does not apply to --scheme cyclegan" in message
    assert "cyclegan.constant_iters + cyclegan.decay_iters" in message
    assert "prompt_init_iters" not in message  # not the CLIP scheme's rule
    # The CLIP scheme's keys in a config file are no error (train.example.toml documents both schemes).
    example = REPO / "train.example.toml"
    assert load_config(example, ["run.scheme=cyclegan"]).run.scheme == "cyclegan"
    with pytest.raises(TrainConfigError, match=r"cyclegan\.\* does not apply to --scheme clip.*schedule.total_iters"):
        load_config(None, ["cyclegan.constant_iters=5"])


def test_the_trainer_without_its_extra_names_the_extra_and_the_install_command(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.trainer_testkit import make_data, write_tiny_clip_config

    abnormal, normal = make_data(tmp_path)
    clip = write_tiny_clip_config(tmp_path)
    script = (
        "import sys; sys.modules['open_clip'] = None  # as if the train extra were not installed\n"
        "from trainer.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "--abnormal",
            str(abnormal),
            "--normal",
            str(normal),
            "--out",
            str(tmp_path / "w.safetensors"),
            "--clip",
            str(clip),
            "--clip-weights",
            "none",
            "--device",
            "cpu",
            "--set",
            "data.crop_size=48",
            "--set",
            "data.workers=0",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert "'train' extra" in proc.stderr and "pip install 'drdaemon[train]'" in proc.stderr
