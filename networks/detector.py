"""The detector interface used by notebooks and every script: load a checkpoint, score images."""
import os

import torch
from PIL import Image

from util import select_device
from .checkpoint import extract_state_dict, load_checkpoint, load_state_dict_strict
from .resnet import resnet50


def load_detector(path, device=None):
    """An eval-mode NPR model with the weights of ``path``, on ``device`` (default: CUDA if available).

    Accepts the official ``NPR.pth``, our training checkpoints and DataParallel ones.
    """
    device = torch.device(device) if device is not None else select_device("0")
    model = resnet50(num_classes=1)
    load_state_dict_strict(model, extract_state_dict(load_checkpoint(path)), source=f"checkpoint '{path}'")
    return model.to(device).eval()


def _as_batch(images, transform):
    from data.transforms import load_rgb, normalize_batch, pil_to_uint8_tensor

    if torch.is_tensor(images):
        x = images if images.dim() == 4 else images.unsqueeze(0)
        return x if x.is_floating_point() else normalize_batch(x)
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    tensors = []
    for im in images:
        im = load_rgb(im) if isinstance(im, (str, os.PathLike)) else im.convert("RGB")
        tensors.append(transform(im) if transform is not None else pil_to_uint8_tensor(im))
    return normalize_batch(torch.stack(tensors))


@torch.inference_mode()
def predict_proba(model, images, transform=None, batch_size=32):
    """Fake-probabilities (sigmoid of the logit) for PIL images, file paths or tensors.

    * paths / PIL images go through ``transform`` (a ``data.transforms.EvalTransform``; by
      default none, i.e. the pixels as they are -- NPR reads pixel-level traces); images of
      different sizes are scored one by one.
    * a uint8 tensor (N, 3, H, W) is normalised; a float tensor is taken as already normalised.
    Returns a 1-D float tensor on the CPU.
    """
    device = next(model.parameters()).device
    if torch.is_tensor(images):
        x = _as_batch(images, transform)
        return torch.cat([torch.sigmoid(model(x[i:i + batch_size].to(device)).float()).flatten().cpu()
                          for i in range(0, len(x), batch_size)])
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    return torch.cat([torch.sigmoid(model(_as_batch(im, transform).to(device)).float()).flatten().cpu()
                      for im in images])
