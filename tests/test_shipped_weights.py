"""What ships with the package: the enhancer the net engine runs without ``engine.weights``, and
the bundled radiograph CLIP the trainer loads with ``--clip radiograph-clip --clip-weights bundled``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drdaemon.config import EngineConfig
from drdaemon.defaults import SHIPPED_WEIGHTS
from drdaemon.engines.net import build_net_engines
from drdaemon.evaluate.baselines import build_method
from drdaemon.io.durable import file_sha256
from tests.trainer_testkit import write_tiny_clip_config
from trainer.clip.backbone import load_backbone
from trainer.radiograph.bundle import bundle_clip, bundle_enhancer
from trainer.shared import clip_weights
from trainer.shared.clip_weights import ClipUnavailable
from trainer.shared.export import card_path

SHIPPED_CARD = card_path(SHIPPED_WEIGHTS)


def frame() -> np.ndarray:
    rng = np.random.default_rng(1)
    ramp = np.linspace(800, 50000, 96)[None, :] * np.ones((64, 1))
    return (ramp + rng.normal(0, 300, ramp.shape)).clip(0, 65535).astype(np.uint16)


def test_the_shipped_enhancer_and_its_card_agree_and_run_without_a_weights_key() -> None:
    card = json.loads(SHIPPED_CARD.read_text())
    assert card["weights"]["sha256"] == file_sha256(SHIPPED_WEIGHTS)
    assert card["name"] and card["clip"] and card["data"] and card["final_losses"] and card["versions"]
    engine = build_net_engines(EngineConfig(name="net", devices=["cpu"], precision="float32"))[0]
    result = engine.enhance(frame())
    assert engine.weights_sha256 == card["weights"]["sha256"]
    assert result.parameters["weights_name"] == card["name"]
    assert result.pixels.shape == (64, 96) and result.pixels.dtype == np.uint16 and result.pixels.std() > 0


def test_the_evaluations_net_method_without_a_path_is_the_shipped_enhancer() -> None:
    method = build_method("net", device="cpu")
    assert method.label == "net (shipped)"
    direct = build_net_engines(EngineConfig(name="net", devices=["cpu"], precision="float32"))[0]
    assert np.array_equal(method.engine.enhance(frame()).pixels, direct.enhance(frame()).pixels)


def test_bundling_an_enhancer_names_it_and_keeps_its_weights(tmp_path: Path) -> None:
    from drdaemon.io.weights import load_weights

    dest = tmp_path / "shipped" / "enhancer.safetensors"
    path, sha256, card = bundle_enhancer(SHIPPED_WEIGHTS, "plant-7 castings v2", dest)
    loaded = load_weights(path)
    assert loaded.name == "plant-7 castings v2" and sha256 == file_sha256(dest)
    assert json.loads(card.read_text())["name"] == "plant-7 castings v2"
    original = load_weights(SHIPPED_WEIGHTS).model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.model.state_dict().items())


@pytest.fixture
def bundled_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "model_configs"
    folder.mkdir()
    monkeypatch.setattr(clip_weights, "BUNDLED_DIR", folder)
    return folder


def test_a_bundled_clip_loads_by_name_with_feature_levels_0_to_4(tmp_path: Path, bundled_dir: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    config_json = write_tiny_clip_config(bundled_dir)  # tiny-rn.json
    torch.manual_seed(0)
    model_cfg = json.loads(config_json.read_text())
    clip = open_clip.CLIP(**model_cfg)
    run = tmp_path / "rclip"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(run / "open_clip_model.safetensors"))
    (run / "model_card.json").write_text(json.dumps({"judge": {"held_out": {"accuracy": 0.99}}}))

    path, sha256, card = bundle_clip(run, name="tiny-rn")
    assert path == bundled_dir / "tiny-rn.safetensors" and json.loads(card.read_text())["judge"]
    assert path.stat().st_size < 0.6 * (run / "open_clip_model.safetensors").stat().st_size  # float16
    backbone = load_backbone("tiny-rn", "bundled")
    assert backbone.source.checkpoint_sha256 == sha256 and backbone.source.weights == "bundled"
    maps = backbone.feature_maps(torch.rand(1, 1, 64, 64))
    assert len(maps) == 5
    loaded = backbone.clip.state_dict()
    for key, value in clip.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(loaded[key].float(), value, rtol=2e-3, atol=1e-4), key


def test_bundled_weights_that_do_not_exist_are_refused_with_what_ships(bundled_dir: Path) -> None:
    write_tiny_clip_config(bundled_dir)
    with pytest.raises(ClipUnavailable, match=r"no bundled CLIP weights for 'tiny-rn' \(bundled: none"):
        load_backbone("tiny-rn", "bundled")


def test_the_shipped_radiograph_clip_loads_offline(tmp_path: Path) -> None:
    shipped = Path(clip_weights.__file__).parents[1] / "model_configs" / "radiograph-clip.safetensors"
    card = json.loads(card_path(shipped).read_text())
    backbone = load_backbone("radiograph-clip", "bundled")
    assert backbone.source.checkpoint_sha256 == card["weights"]["sha256"]
    assert card["judge"]["held_out"] and card["data"]["seed"] is not None
    maps = backbone.feature_maps(torch.rand(1, 1, 128, 128))
    assert len(maps) == 5
