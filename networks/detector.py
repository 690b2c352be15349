"""The detector interface of notebooks and every script: load a checkpoint, prepare the model
for evaluation, score images one by one (``score_images``, the one inference path of
``predict.py`` and ``predict_proba``)."""
import copy
import os
import warnings
from dataclasses import dataclass

import torch
from PIL import Image

from data.images import ImageRule
from data.transforms import normalize_batch
from util import select_device
from .checkpoint import (CheckpointError, checkpoint_operator, extract_state_dict, load_checkpoint,
                         load_state_dict_strict)
from .fuse import fuse_for_inference
from .resnet import OPERATORS, resnet50


def load_detector(path, device=None, ema=False):
    """An eval-mode NPR model with the weights of ``path``, on ``device`` (default: CUDA if available).

    Accepts the official ``NPR.pth``, our training checkpoints, DataParallel ones and SAFE's;
    the artifact operator (``model.operator``) is the checkpoint's. ``ema=True`` loads the
    moving-average weights of a ``train.py --ema`` checkpoint. ``model.threshold`` is the
    decision threshold train.py chose on its validation split (best balanced accuracy), or
    None when the checkpoint has none; the paper's rule is ``prob > 0.5``.
    """
    device = torch.device(device) if device is not None else select_device("0")
    ckpt = load_checkpoint(path)
    state = extract_state_dict(ckpt, ema=ema)
    operator = checkpoint_operator(ckpt, state)
    if operator not in OPERATORS:
        raise CheckpointError(f"checkpoint '{path}' was trained with the artifact operator '{operator}', which this "
                              f"version does not know ({', '.join(OPERATORS)})")
    model = resnet50(operator=operator)
    load_state_dict_strict(model, state, source=f"checkpoint '{path}'")
    model.threshold = ckpt.get("threshold_ema" if ema else "threshold") if isinstance(ckpt, dict) else None
    return model.to(device).eval()


def prepare_model(model, device, channels_last=True, fold_bn=True, compile_model=False):
    """The model as evaluation runs it: on ``device``, eval mode, and the fast paths that keep
    the predictions (BatchNorm folded into the convolutions, channels-last); ``torch.compile``
    only when asked. Returns a new module when folding; ``model`` itself is not changed.
    """
    threshold = getattr(model, "threshold", None)
    model = model.to(device).eval()
    if fold_bn:
        model = fuse_for_inference(model)
    elif channels_last:
        model = copy.deepcopy(model)  # Module.to(memory_format) works in place; leave the caller's model as it is
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.threshold = threshold
    if compile_model:
        model = torch.compile(model)
    return model


@dataclass
class ImageScore:
    image: object              # the path or PIL image as given
    prob: float = None         # P(fake); None when the image was skipped
    skipped: str = None        # why: 'unreadable' or 'too small'
    truncated: bool = False    # scored as far as the file decodes
    pixels: torch.Tensor = None  # the uint8 (3, H, W) input the model saw


@torch.inference_mode()
def score_images(model, images, transform=None, rule=ImageRule()):
    """Yield an ``ImageScore`` per image (paths or PIL images), one at a time, so that sizes may
    differ. ``transform`` (a ``data.transforms.EvalTransform``; None keeps the pixels as they
    are) runs first; ``rule`` decides what happens to an image that cannot be used."""
    device = next(model.parameters()).device
    for im in images:
        pixels, truncated, skipped = rule.load(im, transform)
        if pixels is None:
            yield ImageScore(im, skipped=skipped)
            continue
        x = normalize_batch(pixels.unsqueeze(0)).to(device)
        yield ImageScore(im, torch.sigmoid(model(x).float()).item(), None, truncated, pixels)


def warn_nan(name, err):
    warnings.warn(f"predict_proba: image {name} gets NaN ({err})", stacklevel=4)


@torch.inference_mode()
def predict_proba(model, images, transform=None, batch_size=32, strict=False):
    """Fake-probabilities (sigmoid of the logit) for PIL images, file paths or tensors.

    * paths / PIL images go through ``transform`` (a ``data.transforms.EvalTransform``; by
      default none, i.e. the pixels as they are -- NPR reads pixel-level traces) and are
      scored one by one (``score_images``). An image that cannot be used -- unreadable, or
      under 2x2 pixels after the transform -- gets NaN and one warning naming it
      (``strict=True`` raises a ``ValueError`` instead); truncated files are scored as far as
      they decode, as the reference does.
    * a uint8 tensor (N, 3, H, W) is normalised; a float tensor is taken as already normalised.
    Returns a 1-D float tensor on the CPU.
    """
    if torch.is_tensor(images):
        device = next(model.parameters()).device
        x = images if images.dim() == 4 else images.unsqueeze(0)
        x = x if x.is_floating_point() else normalize_batch(x)
        return torch.cat([torch.sigmoid(model(x[i:i + batch_size].to(device)).float()).flatten().cpu()
                          for i in range(0, len(x), batch_size)])
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    rule = ImageRule(strict=strict, report=warn_nan)
    probs = [float("nan") if s.prob is None else s.prob for s in score_images(model, images, transform, rule)]
    return torch.tensor(probs, dtype=torch.float32)
