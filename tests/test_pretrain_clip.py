"""The radiograph CLIP: captioned data, the grade-aware objective, the judge, the checkpoint, the oracle."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from drdaemon.io.weights import load_weights
from tests.testkit import REPO
from tests.trainer_testkit import write_tiny_clip_config
from trainer.clip.backbone import load_backbone
from trainer.radiograph.config import PretrainConfig, load_pretrain_config
from trainer.radiograph.data import HELD_OUT_CLIPPED_PERCENT, LABEL_PSNR, STATES, CaptionedSet, make_captioned_set
from trainer.radiograph.judge import judge, mean_part_spearman, real_frame_renderings, well_scores, zero_shot_accuracy
from trainer.radiograph.pretrain import (
    WEIGHTS_NAME,
    BatchMaker,
    PretrainRun,
    batch_losses,
    build_model,
    build_parser,
    class_aware_contrastive,
    overrides_from,
    ranking_loss,
    train,
)
from trainer.shared.config import TrainConfigError
from trainer.shared.errors import TrainerError


@pytest.fixture(scope="module")
def tiny_set() -> CaptionedSet:
    return make_captioned_set(seed=3, parts=2, size=64, progress=False)


def test_captioned_set_is_reproducible_from_its_seed(tiny_set: CaptionedSet) -> None:
    again = make_captioned_set(seed=3, parts=2, size=64, progress=False)
    other = make_captioned_set(seed=4, parts=2, size=64, progress=False)
    assert np.array_equal(tiny_set.frames, again.frames)
    assert [r.caption for r in tiny_set.renderings] == [r.caption for r in again.renderings]
    assert not np.array_equal(tiny_set.frames, other.frames)
    assert tiny_set.frames.shape == (2, len(STATES), 64, 64) and tiny_set.frames.dtype == np.uint16


def test_captions_say_what_the_generator_knows(tiny_set: CaptionedSet) -> None:
    for r in tiny_set.renderings:
        words = {0: "well exposed", 1: "nearly well exposed", 2: "badly exposed"}[r.grade]
        assert words in r.caption and r.kind in r.caption
        if r.state == "label":
            assert r.psnr == LABEL_PSNR and r.ssim == 1.0
        else:
            assert r.psnr < LABEL_PSNR
    # the states of a part are different renderings, not copies
    per_part = tiny_set.frames[0].reshape(len(STATES), -1)
    assert len({row.tobytes() for row in per_part}) == len(STATES)


def test_held_out_parts_come_from_the_held_out_dose_range(tiny_set: CaptionedSet) -> None:
    held_out = make_captioned_set(seed=3, parts=2, size=64, held_out=True, progress=False)
    assert all(r.clipped_percent >= HELD_OUT_CLIPPED_PERCENT for r in held_out.renderings)
    assert all(r.clipped_percent < HELD_OUT_CLIPPED_PERCENT for r in tiny_set.renderings)


def test_same_state_captions_are_not_negatives() -> None:
    # Two frames and captions of one state and one of another. Embedding the two same-state
    # pairs alike is what the class-aware loss prefers; plain CLIP targets push them apart.
    classes = torch.tensor([4, 4, 7])
    alike = torch.eye(2)[[0, 0, 1]]
    apart = torch.eye(3)

    def logits(f: torch.Tensor) -> torch.Tensor:
        return 50.0 * f @ f.t()

    assert float(class_aware_contrastive(logits(alike), classes)) < float(
        class_aware_contrastive(logits(apart), classes)
    )
    # at its optimum the loss is the targets' own entropy: (log 2 + log 2 + 0) / 3
    assert float(class_aware_contrastive(logits(alike), classes)) == pytest.approx(2 * np.log(2) / 3, abs=1e-4)
    plain = torch.nn.functional.cross_entropy
    assert float(plain(logits(alike), torch.arange(3))) > float(plain(logits(apart), torch.arange(3)))


def test_ranking_loss_charges_only_misordered_pairs_of_one_part() -> None:
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # bad, well
    images = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # scores +1, -1, -1
    psnr = torch.tensor([30.0, 20.0, 40.0])
    same_part = torch.tensor([0, 0, 1])
    assert float(ranking_loss(images, prompts, psnr, same_part, 0.05, 1.0)) == 0.0
    wrong = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # the better rendering scores lower
    assert float(ranking_loss(wrong, prompts, psnr, same_part, 0.05, 1.0)) == pytest.approx(2.05)


def test_spearman_per_part_is_the_known_rank_correlation() -> None:
    parts = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0])
    quality = np.array([1.0, 3.0, 2.0, 4.0, 30.0, 20.0, 10.0])
    # part 0: one swapped neighbour pair, rho = 1 - 6 * 2 / (4 * 15) = 0.8; part 1 reversed, rho = -1
    assert mean_part_spearman(scores, quality, parts) == pytest.approx((0.8 - 1.0) / 2)


def test_zero_shot_accuracy_on_a_known_case() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0 bad prompt, row 1 well prompt
    images = torch.tensor([[0.2, 0.9], [0.9, 0.1], [0.6, 0.5], [0.1, 0.8], [0.7, 0.7]])
    scores = well_scores(images, text).numpy()
    assert scores == pytest.approx([0.7, -0.8, -0.1, 0.7, 0.0])
    # truths: well, bad, well (wrongly called bad), bad (wrongly called well), near miss (left out)
    overall, on_well, on_bad = zero_shot_accuracy(scores, [True, False, True, False, None])
    assert (overall, on_well, on_bad) == (0.5, 0.5, 0.5)


class BrightnessClip(torch.nn.Module):
    """A stand-in CLIP that calls a frame well exposed exactly when its mean is above mid-scale."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        from trainer.clip.backbone import OPENAI_MEAN, OPENAI_STD

        gray = x[:, 0] * OPENAI_STD[0] + OPENAI_MEAN[0]
        g = gray.mean(dim=(1, 2))  # unit-normalised, the score (2g - 1) / |(1 - g, g)| still grows with g
        return torch.stack([1 - g, g], dim=1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.eye(2)  # bad prompt first, well prompt second, as prompt_features tokenises them


def test_judge_end_to_end_with_a_known_judge() -> None:
    levels = [0.9, 0.7, 0.3, 0.1, 0.6, 0.2]
    frames = [np.full((40, 40), int(v * 65535), np.uint16) for v in levels]
    truth = [True, True, False, False, None, True]  # the last is dark but called well: one error
    quality = np.array(levels)  # brighter is better in this toy, per part
    report, scores = judge(
        BrightnessClip(),
        frames,
        truth,
        quality,
        quality,
        np.array([0, 0, 0, 1, 1, 1]),
        image_size=32,
        context_length=77,
    )
    assert np.sign(scores).tolist() == [1, 1, -1, -1, 1, -1]
    assert report.accuracy == pytest.approx(4 / 5) and report.accuracy_bad == 1.0
    assert report.spearman_psnr == pytest.approx(1.0) and report.parts == 2


def test_real_frame_renderings_start_with_the_windowed_reference() -> None:
    frame = (np.linspace(0, 1, 96 * 128).reshape(96, 128) * 60000).astype(np.uint16)
    renderings = real_frame_renderings(frame, short_side=64)
    names = [name for name, _, _ in renderings]
    assert names[0] == "windowed" and renderings[0][1] is True
    assert all(img.shape == (64, 85) and img.dtype == np.uint16 for _, _, img in renderings)
    assert sum(t is False for _, t, _ in renderings) >= 5


def tiny_config(tmp_path: Path, *overrides: str) -> PretrainConfig:
    """Two parts at 64 pixels, the tiny CLIP, four steps; ``overrides`` as ``--set`` takes them."""
    clip_json = write_tiny_clip_config(tmp_path)
    base = [
        f"model.config='{clip_json}'",
        f"data.frames={2 * len(STATES)}",
        "data.size=64",
        "data.held_out_parts=1",
        "run.seed=3",
        "schedule.steps=4",
        "schedule.warmup_steps=1",
        "optim.parts_per_batch=2",
        "optim.states_per_part=4",
        "optim.lr=2e-3",
        "run.progress=false",
    ]
    return load_pretrain_config(None, [*base, *overrides])


def test_a_few_pretraining_iterations_lower_the_loss(tmp_path: Path, tiny_set: CaptionedSet) -> None:
    cfg = tiny_config(tmp_path, "loss.rank_ssim_weight=1.0")
    torch.manual_seed(0)
    clip, model_cfg = build_model(cfg.model.config)
    size = model_cfg["vision_cfg"]["image_size"]
    batch = BatchMaker(tiny_set, cfg, size, model_cfg["text_cfg"]["context_length"])(0)

    def loss() -> torch.Tensor:
        return batch_losses(clip, batch, cfg, size)["total"]

    optim = torch.optim.Adam(clip.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(loss())
    for _ in range(8):
        optim.zero_grad()
        torch.autograd.backward(loss())
        optim.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.8 * before


def test_checkpoint_loads_through_the_trainers_clip_path(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "run.judge_every=2")
    result = train(cfg, tmp_path / "rclip")
    weights = tmp_path / "rclip" / WEIGHTS_NAME
    assert result.weights == weights and weights.is_file() and result.card.is_file()
    assert (tmp_path / "rclip" / "open_clip_config.json").is_file()
    backbone = load_backbone(cfg.model.config, str(weights))  # what --clip CONFIG --clip-weights PATH runs
    maps = backbone.feature_maps(torch.rand(1, 1, 64, 64))
    assert len(maps) == 5 and [m.shape[-1] for m in maps] == [16, 16, 8, 4, 2]
    assert backbone.source.checkpoint_sha256 is not None
    # the card stores the judge's figures it printed, and the run's whole config
    import json

    card = json.loads(result.card.read_text())
    assert card["judge"]["held_out"]["frames"] == len(STATES)
    assert [j["step"] for j in card["judge"]["during_training"]] == [2, 4]
    assert card["steps"] == cfg.schedule.steps and card["weights"]["sha256"] == backbone.source.checkpoint_sha256
    assert PretrainConfig.model_validate(card["config"]) == cfg
    assert {"name", "weights", "model_config", "use", "data", "first_losses", "final_losses", "judge"} <= set(card)


def test_resume_continues_to_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = tiny_config(tmp_path, "schedule.steps=5")
    straight = train(cfg, tmp_path / "a")
    # stopped by the loop after 2 steps (as Ctrl-C would, checkpointed), then by run.minutes after 1 more
    stopped = PretrainRun(cfg, tmp_path / "b").run(until=2)
    assert stopped.iterations == 2 and not stopped.finished and not (tmp_path / "b" / WEIGHTS_NAME).exists()
    first = train(cfg.model_copy(update={"run": cfg.run.model_copy(update={"minutes": 0.0})}), tmp_path / "b", True)
    assert first.steps == 3 and first.weights.is_file()  # exported as it stood
    resumed = train(cfg, tmp_path / "b", resume=True)
    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    assert resumed.steps == 5 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import json

    card = json.loads(resumed.card.read_text())
    assert card["first_losses"] == json.loads(straight.card.read_text())["first_losses"]


def test_resume_refuses_a_missing_checkpoint_or_other_settings(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "schedule.steps=2")
    with pytest.raises(TrainerError, match="no checkpoint"):
        PretrainRun(cfg, tmp_path / "run", resume=True)
    PretrainRun(cfg, tmp_path / "run").run(until=1)
    with pytest.raises(TrainerError, match="other settings"):
        PretrainRun(tiny_config(tmp_path, "schedule.steps=2", "optim.lr=1e-3"), tmp_path / "run", resume=True)
    # the bookkeeping of [run] may change on resume
    PretrainRun(tiny_config(tmp_path, "schedule.steps=2", "run.log_every=1"), tmp_path / "run", resume=True)


def test_oracle_fits_and_exports_labelled_weights(tmp_path: Path) -> None:
    from trainer.radiograph.oracle import ORACLE_NOTE, OracleConfig, fit, training_pairs

    cfg = OracleConfig(scale=2, parts=2, size=(64, 64), net_pixels=16, batch=2, iterations=3)
    inputs, targets = training_pairs(cfg, progress=False)
    assert inputs.shape == targets.shape == (2, 64, 64) and inputs.min() >= 0 and targets.max() <= 1
    result = fit(cfg, inputs, targets, tmp_path / "oracle" / "weights.safetensors", progress=False)
    loaded = load_weights(Path(result.weights))
    assert loaded.model.spec.illumination_scale == 2 and loaded.provenance["note"] == ORACLE_NOTE
    assert result.iterations == 3


def test_oracle_command_prints_its_labelled_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from trainer.oracle import main

    code = main(
        [
            "--out",
            str(tmp_path / "o"),
            "--scales",
            "2,4",
            "--parts",
            "2",
            "--train-size",
            "96x96",
            "--net-pixels",
            "16",
            "--batch",
            "2",
            "--iterations",
            "2",
            "--pairs",
            "2",
            "--size",
            "96x96",
            "--baselines",
            "identity",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "REACHABILITY ORACLE" in printed and "net (oracle-s4)" in printed
    rows = json.loads((tmp_path / "o" / "oracle.json").read_text())["rows"]
    assert {"identity", "net (oracle-s2)", "net (oracle-s4)"} <= set(rows)
    assert all(rows[k]["psnr"] is not None for k in ("net (oracle-s2)", "net (oracle-s4)", "ideal map s=2"))


def test_pretrain_command_answers_help_and_refuses_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.radiograph.pretrain import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    printed = capsys.readouterr().out
    assert done.value.code == 0 and "--resume" in printed and "--config" in printed and "--set" in printed
    assert main(["--out", "unused", "--frames", "3"]) == 2
    assert "data.frames" in capsys.readouterr().err
    assert main(["--out", "unused", "--set", "loss.rank_marginn=0.1"]) == 2


def test_every_flag_sets_its_config_key_and_wins_over_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "pretrain.toml"
    toml.write_text("[schedule]\nsteps = 300\n[optim]\nlr = 1e-4\n[loss]\nrank_margin = 0.2\n")
    argv = ["--out", "o", "--config", str(toml), "--lr", "3e-4", "--set", "schedule.warmup_steps=7"]
    flags = {
        "--frames": "36",
        "--size": "96",
        "--seed": "5",
        "--model-config": "tiny-rn",
        "--held-out-parts": "3",
        "--parts-per-batch": "4",
        "--states-per-part": "3",
        "--rank-weight": "0.5",
        "--rank-ssim-weight": "0.25",
        "--init": "w.safetensors",
        "--zero-shot-weight": "0",
        "--minutes": "1.5",
        "--threads": "2",
        "--judge-every": "10",
        "--log-every": "5",
    }
    args = build_parser().parse_args([*argv, *(x for pair in flags.items() for x in pair), "--no-progress"])
    cfg = load_pretrain_config(args.config, overrides_from(args))
    assert (cfg.data.frames, cfg.data.size, cfg.data.held_out_parts, cfg.run.seed) == (36, 96, 3, 5)
    assert (cfg.model.config, cfg.model.init) == ("tiny-rn", "w.safetensors")
    assert (cfg.optim.lr, cfg.optim.parts_per_batch, cfg.optim.states_per_part) == (3e-4, 4, 3)
    assert (cfg.loss.rank_weight, cfg.loss.rank_ssim_weight, cfg.loss.zero_shot_weight) == (0.5, 0.25, 0.0)
    assert (cfg.run.minutes, cfg.run.threads, cfg.run.judge_every, cfg.run.log_every) == (1.5, 2, 10, 5)
    assert cfg.run.progress is False
    # the file where no flag says otherwise, --set on top of it
    assert (cfg.schedule.steps, cfg.loss.rank_margin, cfg.schedule.warmup_steps) == (300, 0.2, 7)
    # without flags, the defaults: every flag's default is the config's
    bare = build_parser().parse_args(["--out", "o"])
    assert load_pretrain_config(None, overrides_from(bare)) == PretrainConfig()
    with pytest.raises(TrainConfigError, match="steps"):
        load_pretrain_config(None, ["schedule.steps=0"])


def test_example_file_documents_every_key_with_the_defaults() -> None:
    example = REPO / "pretrain_clip.example.toml"
    assert load_pretrain_config(example) == PretrainConfig()
    lines = example.read_text().splitlines()
    for section, model in PretrainConfig().model_dump().items():
        assert f"[{section}]" in lines
        for key in model:
            line = next((ln for ln in lines if re.match(rf"(# )?{key} =", ln)), None)
            assert line is not None, f"{section}.{key} missing from pretrain_clip.example.toml"
            assert lines[lines.index(line) - 1].startswith("#"), f"{section}.{key} has no comment"


def test_the_command_trains_from_a_config_file_and_judges_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.radiograph.pretrain import main

    clip_json = write_tiny_clip_config(tmp_path)
    toml = tmp_path / "rclip.toml"
    toml.write_text(
        f"[model]\nconfig = '{clip_json}'\n[data]\nframes = {2 * len(STATES)}\nsize = 64\nheld_out_parts = 1\n"
        "[schedule]\nsteps = 5\nwarmup_steps = 1\n[optim]\nparts_per_batch = 2\nstates_per_part = 3\n"
    )
    out = tmp_path / "rclip"
    assert main(["--out", str(out), "--config", str(toml), "--steps", "2", "--log-every", "1", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "pretrain_clip: 2 steps" in printed.out and "judge held-out parts:" in printed.out
    assert "it 1/2" in printed.err and "it 2/2" in printed.err  # the shared loop's loss lines, --log-every 1
    import json

    card = json.loads((out / "model_card.json").read_text())
    assert (
        card["steps"] == 2
        and card["config"]["schedule"]["steps"] == 2
        and card["config"]["optim"]["states_per_part"] == 3
    )
    assert (out / "checkpoint.pt").is_file() and list((out / "tensorboard").iterdir())
    assert main(["--out", str(out), "--config", str(toml), "--steps", "2", "--judge-only", "--no-progress"]) == 0
    assert "judge held-out parts:" in capsys.readouterr().out
    # a resume with other settings is refused by name, nothing trained
    assert main(["--out", str(out), "--config", str(toml), "--steps", "3", "--resume", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
