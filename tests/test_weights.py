import pytest
import torch

from drdaemon.model.network import Enhancer, EnhancerSpec
from drdaemon.model.weights import WeightsError, file_sha256, load_weights, save_weights


def test_safetensors_round_trip_keeps_spec_output_and_hash(tmp_path):
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


def test_pickle_checkpoint_is_refused_unless_allowed(tmp_path):
    net = Enhancer(EnhancerSpec(in_ch=1))
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightsError, match="refused"):
        load_weights(path)
    assert load_weights(path, allow_pickle=True).model.spec.in_ch == 1


def test_provenance_hash_names_the_training_run_and_catches_edited_metadata(tmp_path):
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
