from pathlib import Path

import pytest
import torch

from drdaemon.io.durable import file_sha256
from drdaemon.io.weights import WeightsError, load_weights, save_weights
from drdaemon.model.network import Enhancer, EnhancerSpec


def test_safetensors_round_trip_keeps_spec_output_and_hash(tmp_path: Path) -> None:
    net = Enhancer(EnhancerSpec(in_ch=1, illumination_scale=4)).eval()
    path = tmp_path / "w.safetensors"
    digest = save_weights(path, net, {"run": "unit-test"})
    loaded = load_weights(path)
    assert loaded.sha256 == digest == file_sha256(path)
    assert loaded.model.spec == net.spec
    assert loaded.provenance == {"run": "unit-test"}
    x = torch.rand(1, 1, 41, 29)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.model(x))


def test_pickle_checkpoint_is_refused_unless_allowed(tmp_path: Path) -> None:
    net = Enhancer(EnhancerSpec(in_ch=1))
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightsError, match="refused"):
        load_weights(path)
    assert load_weights(path, allow_pickle=True).model.spec.in_ch == 1


def test_provenance_hash_names_the_training_run_and_catches_edited_metadata(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    net = Enhancer(EnhancerSpec(in_ch=1))
    path = tmp_path / "w.safetensors"
    save_weights(path, net, {"run": "a"})
    other = tmp_path / "other.safetensors"
    save_weights(other, net, {"run": "b"})
    first = load_weights(path).provenance_sha256
    assert len(first) == 64 and first != load_weights(other).provenance_sha256
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
    metadata["provenance"] = '{"run": "forged"}'
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with pytest.raises(WeightsError, match="provenance"):
        load_weights(path)


SAVE_IN_A_NEW_PROCESS = """
import sys, torch
from drdaemon.model.network import Enhancer, EnhancerSpec
from drdaemon.io.weights import save_weights
torch.manual_seed(0)
print(save_weights(sys.argv[1], Enhancer(EnhancerSpec(illumination_scale=2)), {"run": "x", "data": {"files": 3}}))
"""


def test_the_same_weights_give_the_same_file_in_every_process(tmp_path: Path) -> None:
    """The sha256 a sidecar records names the model: safetensors alone orders its metadata per process."""
    import subprocess
    import sys

    digests: set[str] = set()
    for i in range(3):
        path = tmp_path / f"w{i}.safetensors"
        done = subprocess.run(
            [sys.executable, "-c", SAVE_IN_A_NEW_PROCESS, str(path)], check=True, capture_output=True, text=True
        )
        digests.add(done.stdout.strip())
        assert load_weights(path).provenance == {"run": "x", "data": {"files": 3}}
    assert len(digests) == 1


def test_weights_saved_before_the_head_was_named_still_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = Enhancer(EnhancerSpec()).eval()
    old_keys = {
        ("body.6." + k[len("head.conv.") :] if k.startswith("head.conv.") else k): v.contiguous()
        for k, v in net.state_dict().items()
    }
    path = tmp_path / "old.safetensors"
    save_file(
        old_keys,
        str(path),
        metadata={"format_version": "1", "in_ch": "1", "illumination_scale": "1", "architecture": "retinex-ppm-v1"},
    )
    x = torch.rand(1, 1, 30, 20)
    with torch.no_grad():
        assert torch.equal(load_weights(path).model(x), net(x))
