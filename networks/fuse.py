"""An inference-only copy of the detector with every BatchNorm folded into its convolution.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias. Folding removes a full pass over every
feature map (docs/speed.md measures the gain). Probabilities agree with the unfused model
to float rounding (tests/test_detector.py).

The folded copy is for evaluation only: it has no BatchNorm to train and its state dict
no longer matches the checkpoint format, so it is never saved.
"""
import copy

import torch
import torch.nn as nn

from .resnet import Bottleneck, NPRResNet

__all__ = ["fold_conv_bn", "fuse_for_inference"]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``bn(conv(x))`` with ``bn`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_for_inference(model: NPRResNet) -> NPRResNet:
    """A folded, eval-mode copy of ``model`` (the original is left untouched)."""
    if not isinstance(model, NPRResNet):
        raise TypeError(f"fuse_for_inference expects an NPRResNet, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    fused.conv1, fused.bn1 = fold_conv_bn(fused.conv1, fused.bn1), nn.Identity()
    for block in fused.modules():
        if isinstance(block, Bottleneck):
            for i in (1, 2, 3):
                conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
                setattr(block, f"conv{i}", fold_conv_bn(conv, bn))
                setattr(block, f"bn{i}", nn.Identity())
            if block.downsample is not None:
                block.downsample = fold_conv_bn(block.downsample[0], block.downsample[1])
    return fused
