"""The artifact operators: what the first convolution of the network sees.

One registry (``OPERATORS``, name -> ``Operator``) that the network, checkpoint loading,
train.py's ``--operator``, ``bench.py`` and the figures all read. Adding an operator is one
``register_operator`` call; tests/test_operators.py registers a toy one and trains, saves,
loads and evaluates it with no other file touched.

* ``npr``: the NPR residual, the paper's (Tan et al., CVPR 2024; reference code
  chuangchuangtan/NPR-DeepfakeDetection, ``networks/resnet.py``). The default.
* ``dwt``: SAFE's input stage (Li et al., KDD 2025; code Ouxiang-Li/SAFE, ``models/resnet.py``):
  the diagonal (HH) sub-band of a one-level ``bior1.3`` wavelet transform with symmetric
  padding, resized bilinearly back to the input size. SAFE reads pixels in [0, 1] and has a
  two-class head.
"""
from collections.abc import Callable
from dataclasses import dataclass

import ptwt
import torch
import torch.nn.functional as F

__all__ = ["Operator", "OPERATORS", "DEFAULT_OPERATOR", "register_operator", "get_operator", "operator_for_head",
           "npr_residual", "wavelet_hh"]


@dataclass(frozen=True)
class Operator:
    """An artifact operator and what the network around it needs to know.

    ``fn`` maps a batch (N, 3, H, W) to what the first convolution sees (3 channels). It reads
    ImageNet-normalised pixels when ``pixels == "normalized"`` and ToTensor's [0, 1] pixels
    when ``pixels == "unit"`` (the model undoes the normalisation first). ``num_classes`` is
    the head's width: 1 (one logit, NPR's) or 2 ((real, fake) logits, whose difference is the
    model's logit). ``label`` names the operator's output in figures; ``help`` in --help.
    """
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    label: str
    help: str
    num_classes: int = 1
    pixels: str = "normalized"

    def __post_init__(self):
        if self.num_classes not in (1, 2):
            raise ValueError(f"operator '{self.name}': num_classes must be 1 or 2, got {self.num_classes}")
        if self.pixels not in ("normalized", "unit"):
            raise ValueError(f"operator '{self.name}': pixels must be 'normalized' or 'unit', got '{self.pixels}'")


OPERATORS: dict = {}
DEFAULT_OPERATOR = "npr"


def register_operator(op):
    """Add ``op`` to the registry (under ``op.name``) and return it."""
    if op.name in OPERATORS and OPERATORS[op.name] != op:
        raise ValueError(f"an artifact operator named '{op.name}' is already registered")
    OPERATORS[op.name] = op
    return op


def get_operator(name):
    """The registered operator called ``name``; a ValueError naming the choices otherwise."""
    try:
        return OPERATORS[name]
    except KeyError:
        raise ValueError(f"unknown artifact operator '{name}'; choose from {', '.join(OPERATORS)}") from None


def operator_for_head(num_classes):
    """The operator of a checkpoint that does not name its own, told by its head's width: the
    first registered operator with that many outputs (``NPR.pth`` has one logit: npr; SAFE's
    release, ``checkpoint/checkpoint-best.pth`` in Ouxiang-Li/SAFE, two: its operator)."""
    return next((op.name for op in OPERATORS.values() if op.num_classes == num_classes), DEFAULT_OPERATOR)


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


def scaled_npr(x):
    # The reference multiplies the residual by 2/3 before the first convolution (its
    # checkpoints depend on that constant) and writes it ``NPR*2.0/3.0``: two roundings,
    # ``(npr * 2.0) / 3.0``. ``npr * (2.0 / 3.0)`` differs in the last bit for some inputs,
    # and Adam amplifies that into another model within a few steps, so keep this order
    # (tests/test_train_parity.py).
    return npr_residual(x) * 2.0 / 3.0


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


register_operator(Operator("npr", scaled_npr, label="NPR residual", help="the paper's residual"))
register_operator(Operator("dwt", wavelet_hh, label="wavelet HH sub-band (SAFE)",
                           help="SAFE's wavelet HH sub-band, with SAFE's two-class head", num_classes=2,
                           pixels="unit"))
