"""The radiograph CLIP: captioned data, the grade-aware objective, the judge, the checkpoint, the oracle."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from trainer_testkit import write_tiny_clip_config

from drdaemon.io.weights import load_weights
from trainer.clip.backbone import load_backbone
from trainer.radiograph.data import HELD_OUT_CLIPPED_PERCENT, LABEL_PSNR, STATES, CaptionedSet, make_captioned_set
from trainer.radiograph.judge import judge, mean_part_spearman, real_frame_renderings, well_scores, zero_shot_accuracy
from trainer.radiograph.pretrain import (
    WEIGHTS_NAME,
    BatchMaker,
    PretrainConfig,
    build_model,
    class_aware_contrastive,
    pretrain_losses,
    ranking_loss,
    train,
)


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


def tiny_config(tmp_path: Path, **changes: Any) -> PretrainConfig:
    clip_json = write_tiny_clip_config(tmp_path)
    base = PretrainConfig(
        model_config=str(clip_json),
        frames=2 * len(STATES),
        size=64,
        held_out_parts=1,
        seed=3,
        steps=4,
        parts_per_batch=2,
        states_per_part=4,
        lr=2e-3,
        warmup_steps=1,
    )
    return dataclasses.replace(base, **changes)


def test_a_few_pretraining_iterations_lower_the_loss(tmp_path: Path, tiny_set: CaptionedSet) -> None:
    cfg = tiny_config(tmp_path, rank_ssim_weight=1.0)
    torch.manual_seed(0)
    clip, model_cfg = build_model(cfg.model_config)
    size = model_cfg["vision_cfg"]["image_size"]
    batch = BatchMaker(tiny_set, cfg, size, model_cfg["text_cfg"]["context_length"])(0)

    def loss() -> torch.Tensor:
        return pretrain_losses(
            clip,
            batch["views"],
            batch["tokens"],
            batch["prompt_tokens"],
            batch["classes"],
            batch["well"],
            batch["psnr"],
            batch["parts"],
            cfg,
            size,
            batch["ssim"],
        )["total"]

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
    cfg = tiny_config(tmp_path)
    result = train(cfg, tmp_path / "rclip", progress=False, judge_every=2)
    weights = tmp_path / "rclip" / WEIGHTS_NAME
    assert result.weights == weights and weights.is_file() and result.card.is_file()
    backbone = load_backbone(cfg.model_config, str(weights))  # what --clip CONFIG --clip-weights PATH runs
    maps = backbone.feature_maps(torch.rand(1, 1, 64, 64))
    assert len(maps) == 5 and [m.shape[-1] for m in maps] == [16, 16, 8, 4, 2]
    assert backbone.source.checkpoint_sha256 is not None
    # the card stores the judge's figures it printed
    import json

    card = json.loads(result.card.read_text())
    assert card["judge"]["held_out"]["frames"] == len(STATES)
    assert [j["step"] for j in card["judge"]["during_training"]] == [2, 4]
    assert card["steps"] == cfg.steps and card["weights"]["sha256"] == backbone.source.checkpoint_sha256


def test_resume_continues_to_the_same_weights(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=4)
    straight = train(cfg, tmp_path / "a", progress=False)
    first = train(dataclasses.replace(cfg), tmp_path / "b", progress=False, minutes=0.0)  # stops after step 1
    assert first.steps == 1
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    assert resumed.steps == 4 and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


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
    assert done.value.code == 0 and "--resume" in capsys.readouterr().out
    assert main(["--out", "unused", "--frames", "3"]) == 2
