import torch

from drdaemon.model.network import Enhancer, EnhancerSpec, count_parameters


def test_published_parameter_count() -> None:
    assert count_parameters(Enhancer(EnhancerSpec(in_ch=3))) == 278_790


def test_gray_network_keeps_odd_frame_shape_and_range() -> None:
    net = Enhancer(EnhancerSpec(in_ch=1)).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 37, 53))
    assert out.shape == (1, 1, 37, 53)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def lit(scale: int = 1, seed: int = 0) -> Enhancer:
    torch.manual_seed(seed)
    net = Enhancer(EnhancerSpec(illumination_scale=scale)).eval()
    assert net.head.conv.bias is not None
    with torch.no_grad():
        net.head.conv.bias.fill_(0.3)  # an illumination map that is not all zero
    return net


def test_in_place_banded_pass_without_autograd_equals_the_training_form() -> None:
    """Inference writes the residual sums in place, in bands of rows; training keeps autograd's form."""
    net = lit()
    x = torch.rand(1, 1, 300, 45)  # four bands of rows
    trained_form = net.full_illumination(x)  # autograd on: the out-of-place form
    assert trained_form.requires_grad
    with torch.no_grad():
        in_place = net.full_illumination(x)
    assert torch.allclose(in_place, trained_form.detach(), atol=1e-5)
    assert float(in_place.max()) > 0.1


def test_half_precision_keeps_the_illumination_map_and_the_output_in_float32() -> None:
    net = lit()
    x = torch.rand(1, 1, 70, 90)
    with torch.no_grad():
        reference = net(x)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                illumination, out = net.full_illumination(x), net(x)
            assert illumination.dtype == out.dtype == torch.float32
            # one 16-bit output level is 1/65535; the head and the division add no rounding of their own
            assert (out - reference).abs().max() * 65535 < 2000


def test_illumination_head_computes_in_float32_under_autocast() -> None:
    net = lit()
    features = torch.rand(1, 32, 20, 20)
    with torch.no_grad():
        exact = net.head(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = net.head(features)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, exact)
