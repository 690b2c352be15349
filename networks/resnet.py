"""The NPR detector: an artifact operator followed by a truncated ResNet-50.

Everything the paper (Tan et al., CVPR 2024) and the reference code
(chuangchuangtan/NPR-DeepfakeDetection, ``networks/resnet.py``) specify about the network
lives in this file. State-dict names match the authors' release, so the official ``NPR.pth``
loads with ``strict=True``.

Two operators feed the same network (``OPERATORS``):

* ``npr``: the NPR residual, the paper's (the default).
* ``dwt``: SAFE's input stage (Li et al., KDD 2025; code Ouxiang-Li/SAFE, ``models/resnet.py``):
  the diagonal (HH) sub-band of a one-level ``bior1.3`` wavelet transform with symmetric
  padding, resized bilinearly back to the input size. SAFE reads pixels in [0, 1] and has a
  two-class head; this model keeps both, so SAFE's released checkpoint loads with
  ``strict=True``, and returns the log-odds ``z_fake - z_real``, so that every script applies
  the sigmoid to one logit whatever the operator.
"""
import ptwt
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.transforms import MEAN, STD

__all__ = ["OPERATORS", "OPERATOR_NAMES", "npr_residual", "wavelet_hh", "Bottleneck", "NPRResNet", "resnet50"]

OPERATORS = ("npr", "dwt")
OPERATOR_NAMES = {"npr": "NPR residual", "dwt": "wavelet HH sub-band (SAFE)"}


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


def wavelet_hh(x: torch.Tensor) -> torch.Tensor:
    """SAFE's artifact operator on a batch ``x`` (N, C, H, W): the HH sub-band of a one-level
    ``bior1.3`` DWT with symmetric padding (ptwt, which matches PyWavelets and SAFE's
    pytorch_wavelets to float rounding), resized back to H x W as torchvision's ``Resize`` does
    on tensors (bilinear, antialias). Computed in float32, also under autocast."""
    if x.dim() != 4:
        raise ValueError(f"wavelet_hh expects a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"wavelet_hh needs images of at least 2x2 pixels, got {x.shape[-2]}x{x.shape[-1]}")
    with torch.autocast(x.device.type, enabled=False):
        _, (_, _, hh) = ptwt.wavedec2(x.float(), "bior1.3", level=1, mode="symmetric")
        return F.interpolate(hh, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False, antialias=True)


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

    Only the first two ResNet-50 stages exist: 1,437,761 parameters with ``operator="npr"``;
    ``"dwt"`` (SAFE) has a two-class ``fc1``, 513 more. Input: ImageNet-normalised images
    (``data.transforms.normalize_batch``), whatever the operator; output: one logit per image.
    """

    def __init__(self, block=Bottleneck, layers=(3, 4), num_classes=1, operator="npr"):
        super().__init__()
        if operator not in OPERATORS:
            raise ValueError(f"unknown artifact operator '{operator}'; choose from {', '.join(OPERATORS)}")
        self.operator = operator
        if operator == "dwt":
            num_classes = 2  # SAFE's head: (real, fake) logits
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
        if self.operator == "dwt":
            # SAFE reads ToTensor's [0, 1] pixels: undo the normalisation (exact up to float rounding).
            return wavelet_hh(x * self.pixel_std + self.pixel_mean)
        # The reference multiplies the residual by 2/3 before the first convolution (its
        # checkpoints depend on that constant) and writes it ``NPR*2.0/3.0``: two roundings,
        # ``(npr * 2.0) / 3.0``. ``npr * (2.0 / 3.0)`` differs in the last bit for some inputs,
        # and Adam amplifies that into another model within a few steps, so keep this order
        # (tests/test_train_parity.py).
        return npr_residual(x) * 2.0 / 3.0

    def features(self, x):
        """The pooled features (N, 512) of a normalised batch: everything before the classifier."""
        x = self.conv1(self.artifact(x))
        x = self.maxpool(self.relu(self.bn1(x)))
        x = self.layer2(self.layer1(x))
        return torch.flatten(self.avgpool(x), 1)

    def head(self, features):
        """One logit per row of pooled ``features``."""
        x = self.fc1(features)
        if self.operator == "dwt":
            # softmax(z)[:, fake] == sigmoid(z_fake - z_real): one logit, as NPR's.
            return x[:, 1:] - x[:, :1]
        return x

    def forward(self, x):
        return self.head(self.features(x))


def resnet50(pretrained=False, num_classes=1, operator="npr", **kwargs):
    """The NPR detector, named as in the authors' code (``resnet50(num_classes=1)``);
    ``operator="dwt"`` gives SAFE's model (SAFE's ``resnet50(num_classes=2)``).

    ``pretrained`` exists for signature compatibility only: NPR is trained from scratch
    and this codebase never downloads weights.
    """
    if pretrained:
        raise ValueError("pretrained=True is not supported: NPR is trained from scratch; "
                         "load a checkpoint with networks.load_detector(path) instead")
    return NPRResNet(Bottleneck, (3, 4), num_classes=num_classes, operator=operator, **kwargs)
