"""The detector interface used by notebooks and every script: load a checkpoint, score images."""
import os
import warnings

import torch
from PIL import Image

from util import select_device
from .checkpoint import extract_state_dict, load_checkpoint, load_state_dict_strict
from .resnet import resnet50


def load_detector(path, device=None, ema=False):
    """An eval-mode NPR model with the weights of ``path``, on ``device`` (default: CUDA if available).

    Accepts the official ``NPR.pth``, our training checkpoints and DataParallel ones; ``ema=True``
    loads the moving-average weights of a ``train.py --ema`` checkpoint. ``model.threshold`` is
    the decision threshold train.py chose on its validation split (best balanced accuracy), or
    None when the checkpoint has none; the paper's rule is ``prob > 0.5``.
    """
    device = torch.device(device) if device is not None else select_device("0")
    model = resnet50(num_classes=1)
    ckpt = load_checkpoint(path)
    load_state_dict_strict(model, extract_state_dict(ckpt, ema=ema), source=f"checkpoint '{path}'")
    model.threshold = ckpt.get("threshold_ema" if ema else "threshold") if isinstance(ckpt, dict) else None
    return model.to(device).eval()


def _as_batch(images, transform):
    from data.transforms import normalize_batch

    if torch.is_tensor(images):
        x = images if images.dim() == 4 else images.unsqueeze(0)
        return x if x.is_floating_point() else normalize_batch(x)
    raise TypeError(f"expected a tensor batch, got {type(images).__name__}")


@torch.inference_mode()
def predict_proba(model, images, transform=None, batch_size=32, strict=False):
    """Fake-probabilities (sigmoid of the logit) for PIL images, file paths or tensors.

    * paths / PIL images go through ``transform`` (a ``data.transforms.EvalTransform``; by
      default none, i.e. the pixels as they are -- NPR reads pixel-level traces) and are
      scored one by one (sizes may differ). An image that cannot be used -- unreadable, or
      under 2x2 pixels after the transform -- gets NaN and one warning naming it
      (``strict=True`` raises instead); truncated files are scored as far as they decode,
      as the reference does.
    * a uint8 tensor (N, 3, H, W) is normalised; a float tensor is taken as already normalised.
    Returns a 1-D float tensor on the CPU.
    """
    from data.transforms import ImageDecodeError, load_for_model, normalize_batch

    device = next(model.parameters()).device
    if torch.is_tensor(images):
        x = _as_batch(images, transform)
        return torch.cat([torch.sigmoid(model(x[i:i + batch_size].to(device)).float()).flatten().cpu()
                          for i in range(0, len(x), batch_size)])
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    probs = []
    for im in images:
        try:
            pixels, _ = load_for_model(im, transform)
        except ImageDecodeError as e:
            name = im if isinstance(im, (str, os.PathLike)) else f"PIL image {getattr(im, 'size', '')}"
            if strict:
                raise ValueError(f"cannot use image {name}: {e}") from None
            warnings.warn(f"predict_proba: image {name} gets NaN ({e})", stacklevel=2)
            probs.append(torch.tensor([float("nan")]))
            continue
        x = normalize_batch(pixels.unsqueeze(0)).to(device)
        probs.append(torch.sigmoid(model(x).float()).flatten().cpu())
    return torch.cat(probs) if probs else torch.zeros(0)
