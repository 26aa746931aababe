import torch

from drdaemon.model.network import Enhancer, EnhancerSpec, count_parameters


def test_published_parameter_count():
    assert count_parameters(Enhancer(EnhancerSpec(in_ch=3))) == 278_790


def test_gray_network_keeps_odd_frame_shape_and_range():
    net = Enhancer(EnhancerSpec(in_ch=1)).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 37, 53))
    assert out.shape == (1, 1, 37, 53)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
