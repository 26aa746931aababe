"""The frozen CLIP: model configs, weight sources, offline failure, ResNet feature levels, gradients."""

import json
import os
import subprocess
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from tests.testkit import REPO
from tests.trainer_testkit import TINY_CLIP, make_data, trainer_command, write_tiny_clip_config
from trainer.clip.backbone import load_backbone
from trainer.clip.prompts import PromptPair
from trainer.shared.clip_weights import ClipUnavailable, build_clip


@pytest.fixture()
def tiny_json(tmp_path: Path) -> Path:
    return write_tiny_clip_config(tmp_path)


def reference_clip(seed: int = 3) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CLIP)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_feature_levels_and_embedding_shapes(tiny_json: Path) -> None:
    backbone = load_backbone(str(tiny_json), "none")
    x = torch.rand(2, 1, 64, 64)
    maps = backbone.feature_maps(x)
    # stem (after its pool) at 1/4, then layer1..4 at 1/4, 1/8, 1/16, 1/32 of the input
    assert [m.shape[-1] for m in maps] == [16, 16, 8, 4, 2]
    assert [m.shape[1] for m in maps] == [8, 32, 64, 128, 256]
    assert backbone.image_features(x).shape == (2, 32)
    assert len(backbone.feature_maps(x, levels=3)) == 3


def test_frozen_but_gradients_reach_the_image(tiny_json: Path) -> None:
    backbone = load_backbone(str(tiny_json), "none").train()
    visual = backbone.clip.visual
    assert isinstance(visual, torch.nn.Module)
    assert not backbone.training and not visual.training
    assert not any(p.requires_grad for p in backbone.parameters())
    x = torch.rand(2, 1, 48, 48, requires_grad=True)
    prompts = PromptPair(backbone, n_tokens=16)
    loss = (backbone.image_features(x) @ prompts(backbone).t()).sum() + sum(m.mean() for m in backbone.feature_maps(x))
    torch.autograd.backward(loss)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert prompts.ctx.grad is not None and prompts.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_model_config_json_with_model_cfg_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    clip, source = build_clip(str(path), "none")
    visual = clip.visual
    assert isinstance(visual, torch.nn.Module)
    assert visual.image_size == 32 and source.checkpoint is None


def test_non_resnet_tower_is_refused(tmp_path: Path) -> None:
    vit = dict(TINY_CLIP, vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8})
    path = tmp_path / "vit.json"
    path.write_text(json.dumps(vit))
    with pytest.raises(ClipUnavailable, match="non-ResNet visual tower"):
        build_clip(str(path), "none")
    with pytest.raises(ClipUnavailable, match="non-ResNet"):
        build_clip("ViT-B-32", "none")


@pytest.mark.parametrize("form", ["state_dict.pt", "wrapped.pt", "weights.safetensors", "jit.pt", "local-dir"])
def test_checkpoint_forms_load_the_same_weights(tmp_path: Path, tiny_json: Path, form: str) -> None:
    reference = reference_clip()
    state = reference.state_dict()
    if form == "state_dict.pt":
        target = tmp_path / form
        torch.save(state, target)
        weights = str(target)
    elif form == "wrapped.pt":
        target = tmp_path / form
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, target)
        weights = str(target)
    elif form == "weights.safetensors":
        target = tmp_path / form
        save_file({k: v.contiguous() for k, v in state.items()}, str(target))
        weights = str(target)
    elif form == "jit.pt":  # OpenAI ships TorchScript archives
        target = tmp_path / form
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]  # torch.jit.trace carries no annotations
            reference.eval(),
            (torch.rand(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)),
            check_trace=False,
            strict=True,
        )
        traced.save(str(target))
        weights = str(target)
    else:
        folder = tmp_path / "clip-folder"
        folder.mkdir()
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
        weights = f"local-dir:{folder}"
    clip, source = build_clip(str(tiny_json), weights)
    assert same_weights(clip, reference)
    assert source.checkpoint_sha256 and len(source.checkpoint_sha256) == 64


def test_missing_or_mismatched_checkpoint_says_what_to_do(tmp_path: Path, tiny_json: Path) -> None:
    with pytest.raises(ClipUnavailable, match="--clip-weights"):
        build_clip(str(tiny_json), str(tmp_path / "absent.pt"))
    with pytest.raises(ClipUnavailable, match="local-dir"):
        build_clip(str(tiny_json), f"local-dir:{tmp_path / 'nowhere'}")
    bad = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ClipUnavailable, match="does not match"):
        build_clip(str(tiny_json), str(bad))


def test_offline_pretrained_request_fails_fast_with_instructions(tmp_path: Path) -> None:
    """RN101-quickgelu/openai with no network and an empty cache: seconds, and a useful message."""
    env = dict(
        os.environ,
        HF_HOME=str(tmp_path / "hf"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="0",
        PYTHONPATH=str(REPO),
    )
    abnormal, normal = make_data(tmp_path)
    started = time.monotonic()
    proc = subprocess.run(
        trainer_command(
            abnormal, normal, tmp_path / "w.safetensors", "--clip", "RN101-quickgelu", "--clip-weights", "openai"
        ),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert "--clip-weights" in proc.stderr and "local-dir:" in proc.stderr
    assert elapsed < 60, f"took {elapsed:.1f} s to give up"


def test_score_temperature_is_the_loaded_clips_own_unless_a_number_is_set(tmp_path: Path, tiny_json: Path) -> None:
    import math

    from trainer.clip.scheme import score_temperature
    from trainer.shared.config import ClipConfig, TrainConfigError, load_config

    assert ClipConfig().logit_scale == "model" and ClipConfig().feature_size == "model"
    clip = reference_clip()
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(50.0))
    checkpoint = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), checkpoint)
    loaded = load_backbone(str(tiny_json), str(checkpoint))
    assert score_temperature("model", loaded) == pytest.approx(50.0, rel=1e-5)
    assert score_temperature(7.0, loaded) == 7.0
    assert score_temperature("model", load_backbone(str(tiny_json), "none")) == 100.0
    assert load_config(None, ["clip.logit_scale=100"]).clip.logit_scale == 100.0
    for bad in ("clip.logit_scale=0", 'clip.logit_scale="own"', 'clip.feature_size="crop"'):
        with pytest.raises(TrainConfigError):
            load_config(None, [bad])


def test_feature_maps_at_the_tower_input_size(tiny_json: Path) -> None:
    backbone = load_backbone(str(tiny_json), "none")
    x = torch.rand(2, 1, 48, 48)
    maps = backbone.feature_maps(x, size=backbone.image_size)  # the tiny tower's input is 32 px
    assert [m.shape[-1] for m in maps] == [8, 8, 4, 2, 1]
    resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(maps[2], backbone.feature_maps(resized)[2], atol=1e-6)
