"""networks/resnet.py: the NPR residual by hand and against the reference's interpolation, odd sizes,
the parameter count and state-dict names of the official NPR.pth, any input size, the 2/3 input scaling."""
import pytest
import torch
import torch.nn.functional as F

from networks import npr_residual, resnet50


def test_npr_residual_hand_computed_4x4():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    # top-left pixels of the 2x2 blocks: 0, 2, 8, 10
    expected = torch.tensor([[0, 1, 0, 1], [4, 5, 4, 5], [0, 1, 0, 1], [4, 5, 4, 5]], dtype=torch.float32)
    assert torch.equal(npr_residual(x)[0, 0], expected)


def test_npr_residual_matches_reference_interpolation():
    x = torch.randn(2, 3, 10, 14)
    down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    up = F.interpolate(down, scale_factor=2, mode="nearest", recompute_scale_factor=True)
    assert torch.equal(npr_residual(x), x - up)  # the same values, not just close


@pytest.mark.parametrize("h,w", [(5, 7), (2, 3), (3, 2), (9, 9)])
def test_npr_residual_odd_sizes_drop_last_row_col(h, w):
    x = torch.randn(1, 3, h, w)
    r = npr_residual(x)
    assert r.shape == (1, 3, h - h % 2, w - w % 2)
    assert torch.equal(r, npr_residual(x[:, :, : h - h % 2, : w - w % 2]))
    assert torch.all(r[:, :, ::2, ::2] == 0)


def test_npr_residual_rejects_tiny_and_bad_shapes():
    with pytest.raises(ValueError):
        npr_residual(torch.randn(1, 3, 1, 5))
    with pytest.raises(ValueError):
        npr_residual(torch.randn(3, 4, 4))


def test_parameter_count_and_state_dict_names():
    m = resnet50(num_classes=1)
    sd = m.state_dict()
    assert sum(p.numel() for p in m.parameters()) == 1_437_761
    assert len(sd) == 146
    assert sd["conv1.weight"].shape == (64, 3, 3, 3)
    assert sd["fc1.weight"].shape == (1, 512) and "fc1.bias" in sd
    assert "layer1.0.downsample.0.weight" in sd and "layer2.0.downsample.1.running_var" in sd
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert not any(k.startswith(("layer3", "layer4", "fc.")) for k in sd)


def test_forward_shapes_any_size():
    m = resnet50(num_classes=1).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 224, 224)).shape == (2, 1)
        assert m(torch.randn(1, 3, 33, 47)).shape == (1, 1)
        assert m(torch.randn(1, 3, 2, 2)).shape == (1, 1)


def test_input_scaling_two_thirds():
    # The first conv sees NPR * 2/3: scaling the input by 3/2 equals scaling the stem weights.
    m = resnet50(num_classes=1).eval()
    x = torch.randn(1, 3, 16, 16)
    stem = F.conv2d(npr_residual(x) * (2.0 / 3.0), m.conv1.weight, stride=2, padding=1)
    captured = {}
    m.conv1.register_forward_hook(lambda mod, i, o: captured.setdefault("o", o))
    with torch.no_grad():
        m(x)
    assert torch.allclose(captured["o"], stem, atol=1e-6)


def test_pretrained_refused():
    with pytest.raises(ValueError):
        resnet50(pretrained=True)
