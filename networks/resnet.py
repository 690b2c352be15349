"""The NPR detector: the NPR residual followed by a truncated ResNet-50.

Everything the paper (Tan et al., CVPR 2024) and the reference code
(chuangchuangtan/NPR-DeepfakeDetection, ``networks/resnet.py``) specify about the network
lives in this file.
State-dict names match the authors' release, so the official ``NPR.pth`` loads with
``strict=True``.
"""
import torch
import torch.nn as nn

__all__ = ["npr_residual", "Bottleneck", "NPRResNet", "resnet50"]


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """Neighbouring Pixel Relationships of a batch ``x`` of shape (N, C, H, W).

    ``NPR[..., i, j] = x[..., i, j] - x[..., 2*(i//2), 2*(j//2)]``: the image minus its
    nearest-neighbour down-then-up-sampled copy, which is zero on the top-left pixel of
    every 2x2 block. An odd height or width first drops the last row / column, as the
    authors advise, so the output is (N, C, H - H % 2, W - W % 2).
    """
    if x.dim() != 4:
        raise ValueError(f"npr_residual expects a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"npr_residual needs images of at least 2x2 pixels, got {h}x{w}")
    h2, w2 = h // 2, w // 2
    x = x[:, :, : 2 * h2, : 2 * w2]
    # View every 2x2 block as its own pair of axes; subtracting the block's top-left
    # pixel by broadcasting is the same as nearest down- then up-sampling by 2.
    blocks = x.reshape(n, c, h2, 2, w2, 2)
    return (blocks - blocks[:, :, :, :1, :, :1]).reshape(n, c, 2 * h2, 2 * w2)


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """torchvision's "v1.5" bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class NPRResNet(nn.Module):
    """NPR residual -> 3x3/2 stem -> layer1 -> layer2 -> global average pool -> ``fc1``.

    Only the first two ResNet-50 stages exist: 1,437,761 parameters.
    """

    def __init__(self, block=Bottleneck, layers=(3, 4), num_classes=1):
        super().__init__()
        self.inplanes = 64
        # A 3x3 stride-2 stem, not ResNet's 7x7: the residual is a pixel-level signal.
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Linear(512, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        # The reference multiplies the residual by 2/3 before the first convolution (its
        # checkpoints depend on that constant) and writes it ``NPR*2.0/3.0``: two roundings,
        # ``(npr * 2.0) / 3.0``. ``npr * (2.0 / 3.0)`` differs in the last bit for some inputs,
        # and Adam amplifies that into another model within a few steps, so keep this order
        # (tests/test_train_parity.py).
        x = self.conv1(npr_residual(x) * 2.0 / 3.0)
        x = self.maxpool(self.relu(self.bn1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc1(torch.flatten(self.avgpool(x), 1))


def resnet50(pretrained=False, num_classes=1, **kwargs):
    """The NPR detector, named as in the authors' code (``resnet50(num_classes=1)``).

    ``pretrained`` exists for signature compatibility only: NPR is trained from scratch
    and this codebase never downloads weights.
    """
    if pretrained:
        raise ValueError("pretrained=True is not supported: NPR is trained from scratch; "
                         "load a checkpoint with networks.load_detector(path) instead")
    return NPRResNet(Bottleneck, (3, 4), num_classes=num_classes, **kwargs)
