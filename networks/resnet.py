"""The NPR detector: an artifact operator followed by a truncated ResNet-50.

Everything the paper (Tan et al., CVPR 2024) and the reference code
(chuangchuangtan/NPR-DeepfakeDetection, ``networks/resnet.py``) specify about the network
lives in this file; the operators themselves in ``operators.py``. State-dict names match the
authors' release, so the official ``NPR.pth`` loads with ``strict=True``, and so does SAFE's
release for its operator: a two-class head is kept as it is, and the model returns the log-odds
``z_fake - z_real``, so that every script applies the sigmoid to one logit whatever the operator.
"""
import torch
import torch.nn as nn

from data.transforms import MEAN, STD

from .operators import DEFAULT_OPERATOR, get_operator

__all__ = ["Bottleneck", "NPRResNet", "resnet50"]


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
    """artifact operator -> 3x3/2 stem -> layer1 -> layer2 -> global average pool -> ``fc1``.

    Only the first two ResNet-50 stages exist: 1,437,761 parameters with NPR's one-logit head;
    an operator with a two-class head (SAFE's) has 513 more. Input: ImageNet-normalised images
    (``data.transforms.normalize_batch``), whatever the operator; output: one logit per image.
    ``operator`` is a name in ``networks.OPERATORS``.
    """

    def __init__(self, block=Bottleneck, layers=(3, 4), num_classes=1, operator=DEFAULT_OPERATOR):
        super().__init__()
        op = get_operator(operator)
        self.operator = operator
        self._artifact = op.fn
        self.two_class = op.num_classes == 2
        if self.two_class:
            num_classes = 2  # (real, fake) logits
        self.unit_pixels = op.pixels == "unit"
        if self.unit_pixels:
            # Not in the state dict: SAFE's checkpoints hold none.
            self.register_buffer("pixel_mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
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

    def artifact(self, x):
        """What the first convolution sees for a normalised batch ``x``."""
        if self.unit_pixels:
            # The operator reads ToTensor's [0, 1] pixels: undo the normalisation (exact up to float rounding).
            x = x * self.pixel_std + self.pixel_mean
        return self._artifact(x)

    def features(self, x):
        """The pooled features (N, 512) of a normalised batch: everything before the classifier."""
        x = self.conv1(self.artifact(x))
        x = self.maxpool(self.relu(self.bn1(x)))
        x = self.layer2(self.layer1(x))
        return torch.flatten(self.avgpool(x), 1)

    def head(self, features):
        """One logit per row of pooled ``features``."""
        x = self.fc1(features)
        if self.two_class:
            # softmax(z)[:, fake] == sigmoid(z_fake - z_real): one logit, as NPR's.
            return x[:, 1:] - x[:, :1]
        return x

    def forward(self, x):
        return self.head(self.features(x))


def resnet50(pretrained=False, num_classes=1, operator=DEFAULT_OPERATOR, **kwargs):
    """The NPR detector, named as in the authors' code (``resnet50(num_classes=1)``); another
    ``operator`` of ``networks.OPERATORS`` gives that model (SAFE's: its ``resnet50(num_classes=2)``).

    ``pretrained`` exists for signature compatibility only: NPR is trained from scratch
    and this codebase never downloads weights.
    """
    if pretrained:
        raise ValueError("pretrained=True is not supported: NPR is trained from scratch; "
                         "load a checkpoint with networks.load_detector(path) instead")
    return NPRResNet(Bottleneck, (3, 4), num_classes=num_classes, operator=operator, **kwargs)
