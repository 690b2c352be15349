"""The detector interface of notebooks and every script: load a checkpoint, prepare the model
for evaluation, and score images: ``batch_probs`` runs the model on a batch (every evaluation
path), ``score_images`` streams images through the evaluation loader (``predict.py``, the demo
and ``predict_proba``)."""
import contextlib
import copy
import os
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from data.images import ImageRule, image_name
from data.loaders import batches, make_eval_loader
from data.transforms import normalize_batch
from devices import AMP_DTYPE, select_device, usable_device
from util import one_line

from .checkpoint import (CheckpointError, checkpoint_operator, extract_state_dict, load_state_dict_strict,
                         read_checkpoint, stored_threshold)
from .ema import THRESHOLD_KEY as EMA_THRESHOLD_KEY
from .fuse import fuse_for_inference
from .operators import OPERATORS
from .resnet import resnet50


class Loaded(NamedTuple):
    """A checkpoint's model, the decision threshold it stores (or None), and the SHA-256 of the
    file's bytes that were loaded: what identifies the model in result files, however its path is
    spelled and whatever is saved over that path later."""
    model: torch.nn.Module
    threshold: float
    sha256: str


def load_weights(path, device=None, ema=False):
    """``Loaded``: an eval-mode NPR model with the weights of ``path`` on ``device``; what
    ``load_detector`` and ``load_for_evaluation`` share."""
    device = usable_device(device) if device is not None else select_device("0")
    ckpt, sha256 = read_checkpoint(path)
    state = extract_state_dict(ckpt, ema=ema)
    operator = checkpoint_operator(ckpt, state)
    if operator not in OPERATORS:
        raise CheckpointError(f"checkpoint '{path}' was trained with the artifact operator '{operator}', which this "
                              f"version does not know ({', '.join(OPERATORS)})")
    model = resnet50(operator=operator)
    load_state_dict_strict(model, state, source=f"checkpoint '{path}'")
    return Loaded(model.to(device).eval(), stored_threshold(ckpt, EMA_THRESHOLD_KEY if ema else "threshold", path),
                  sha256)


def load_detector(path, device=None, ema=False):
    """An eval-mode NPR model with the weights of ``path``, on ``device`` (default: CUDA if available).

    Accepts the official ``NPR.pth``, our training checkpoints, DataParallel ones and SAFE's;
    the artifact operator (``model.operator``) is the checkpoint's. ``ema=True`` loads the
    moving-average weights of a ``train.py --ema`` checkpoint. For notebooks,
    ``model.threshold`` is the decision threshold train.py chose on its validation split (best
    balanced accuracy), or None when the checkpoint has none; the paper's rule is ``prob > 0.5``;
    ``model.sha256`` identifies the checkpoint's bytes.
    """
    model, model.threshold, model.sha256 = load_weights(path, device, ema)
    return model


def prepare_model(model, device, channels_last=True, fold_bn=True, compile_model=False):
    """The model as evaluation runs it: on ``device``, eval mode, and the fast paths that keep
    the predictions (BatchNorm folded into the convolutions, channels-last); ``torch.compile``
    only when asked. Returns a new module when folding; ``model`` itself is not changed.
    """
    model = model.to(device).eval()
    if fold_bn:
        model = fuse_for_inference(model)
    elif channels_last:
        model = copy.deepcopy(model)  # Module.to(memory_format) works in place; leave the caller's model as it is
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    return model


def load_for_evaluation(path, device, ema=False, **prepare):
    """What every script evaluates: ``Loaded``, its model prepared by ``prepare_model`` with
    ``prepare``."""
    model, stored, sha256 = load_weights(path, device, ema)
    return Loaded(prepare_model(model, device, **prepare), stored, sha256)


# On the CPU, a forward over a whole batch of large images allocates activations of hundreds
# of MB per layer; sub-batches of at most this many pixels give the same predictions with a
# fraction of the memory, and no slower (docs/speed.md). 40-48 px batches stay whole.
CPU_FORWARD_PIXELS = 8 * 256 * 256
# On a GPU a batch runs whole, but the tiles of one photo are batched up to this many pixels
# (an 89.5 Mpx image has 342 tiles of 512 x 512).
GPU_TILE_PIXELS = 64 * 512 * 512
# The pixel budget: an image of at most this many pixels (1 Mpx: 1024 x 1024, the largest
# images of the paper's benchmarks) is scored whole, as the reference does; a larger one (a
# phone photo) in TILE x TILE tiles whose pooled features are averaged, so that memory stays
# bounded whatever the image (docs/troubleshooting.md compares the two verdicts).
PIXEL_BUDGET = 1024 * 1024
TILE = 512  # a multiple of 8, the network's stride: tiles keep NPR's 2x2 grid and the feature grid
# The network's stride: a strip narrower than this left over at the right or bottom edge joins the
# tile before it instead of becoming a tile of its own (a 1 px strip has no 2x2 block).
MIN_TILE_SIDE = 8


def is_channels_last(model):
    """Whether ``model``'s convolution weights are in the channels-last layout (``prepare_model``)."""
    return next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in evaluation mode for the block, each submodule's mode restored after: scoring
    a model that is training (a notebook between epochs) neither uses the batch's statistics nor
    moves BatchNorm's running ones."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _forward(model, x, device, channels_last, amp, features=False):
    x = x.to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=amp and device.type == "cuda"):
        x = (x if x.is_floating_point() else normalize_batch(x)).to(next(model.parameters()).dtype)  # .double() models
        return (model.features(x) if features else model(x)).float()


def forward_step(device, pixels, n, tiles=False):
    """How many of ``n`` images of ``pixels`` pixels each go through one forward pass: on the CPU
    sub-batches of ``CPU_FORWARD_PIXELS``, and tiles up to one whole tile's pixels (so a photo's
    peak memory is that of one tile, while the narrow tiles of a long thin image share a pass);
    on a GPU all ``n``, or ``GPU_TILE_PIXELS`` of tiles."""
    if device.type == "cpu":
        return max(1, (TILE * TILE if tiles else CPU_FORWARD_PIXELS) // pixels)
    return max(1, GPU_TILE_PIXELS // pixels) if tiles else max(1, n)


def tile_spans(length, tile=None):
    """(start, size) of the tiles along one side: starts on a ``tile`` grid (default ``TILE``),
    the last span as large as what is left, and a remainder under ``MIN_TILE_SIDE`` joined to
    the span before it."""
    tile = tile or TILE
    starts = list(range(0, length, tile))
    if len(starts) > 1 and length - starts[-1] < MIN_TILE_SIDE:
        starts.pop()
    ends = starts[1:] + [length]
    return [(s, e - s) for s, e in zip(starts, ends)]


def tiles(height, width, tile=None):
    """(top, left, height, width) of the tiles covering an image (``tile_spans`` on each side)."""
    return [(top, left, h, w) for top, h in tile_spans(height, tile) for left, w in tile_spans(width, tile)]


def tiled_logit(model, image, device, channels_last, amp):
    """The logit of one image above ``PIXEL_BUDGET``: each tile's pooled features, weighted by the
    size of its feature map (ceil(side / 8) per side), averaged, then the classifier; without
    tile borders this is the whole image's average pooling. Tiles of one size run in batches
    (``forward_step``), so a long thin image costs what its pixels cost, not a pass per tile."""
    by_size = {}
    for top, left, h, w in tiles(*image.shape[-2:]):
        by_size.setdefault((h, w), []).append((top, left))
    total, weight = 0.0, 0
    for (h, w), origins in by_size.items():
        n = -(-h // 8) * -(-w // 8)
        step = forward_step(device, h * w, len(origins), tiles=True)
        for i in range(0, len(origins), step):
            x = torch.stack([image[:, top:top + h, left:left + w] for top, left in origins[i:i + step]])
            total = total + n * _forward(model, x, device, channels_last, amp, True).sum(0, keepdim=True)
            weight += n * len(x)
    with torch.autocast(device.type, enabled=False):
        return model.head((total / weight).to(next(model.parameters()).dtype)).float()


@torch.inference_mode()
def batch_probs(model, images, channels_last=None, amp=False):
    """P(fake) of a batch: ``images`` is uint8 (N, 3, H, W), or float and already normalised.

    Returns a float32 (N,) tensor on the CPU. On the device of ``model``; channels-last input
    when ``channels_last`` (None: when the model is, as ``prepare_model`` leaves it); float16
    autocast with ``amp`` on CUDA; on the CPU in sub-batches of ``CPU_FORWARD_PIXELS`` pixels.
    Images above ``PIXEL_BUDGET`` pixels are scored in tiles (``tiled_logit``).
    """
    device = next(model.parameters()).device
    channels_last = is_channels_last(model) if channels_last is None else channels_last
    pixels = images.shape[-1] * images.shape[-2]
    with eval_mode(model):
        if pixels > PIXEL_BUDGET:
            logits = [tiled_logit(model, im, device, channels_last, amp) for im in images]
            return torch.sigmoid(torch.cat(logits)).flatten().cpu() if logits else torch.zeros(0)
        step = forward_step(device, pixels, len(images))
        out = [torch.sigmoid(_forward(model, images[i:i + step], device, channels_last, amp)).flatten().cpu()
               for i in range(0, len(images), step)]
    return torch.cat(out) if out else torch.zeros(0)


@torch.inference_mode()
def artifact_map(model, pixels):
    """What ``model``'s artifact operator makes of one image's uint8 pixels (3, H, W): a float
    (1, 3, H', W') tensor on the CPU (the NPR residual; SAFE's sub-band), for figures."""
    device = next(model.parameters()).device
    with eval_mode(model):
        return model.artifact(normalize_batch(pixels.unsqueeze(0).to(device))).float().cpu()


# What a forward pass may raise for one image (a shape the operator refuses, memory): that
# image becomes a skipped row, never the end of a scan. A CUDA out-of-memory error is a RuntimeError.
MODEL_ERRORS = (RuntimeError, ValueError, MemoryError)


def probs_or_errors(model, images, channels_last=None, amp=False):
    """(P(fake) per image, {position: error} for the images the model failed on, whose P(fake) is
    None): ``batch_probs`` on the batch; when it raises, on each image alone, so that one image
    the model cannot score costs only its own row. A NaN output (float16 overflow) is a failure
    too: it would read as "real" at any threshold."""
    try:
        probs = batch_probs(model, images, channels_last, amp).tolist()
        nan = {i: FloatingPointError("its P(fake) is NaN") for i, p in enumerate(probs) if p != p}
        return [None if i in nan else p for i, p in enumerate(probs)], nan
    except MODEL_ERRORS as e:
        if len(images) == 1:
            return [None], {0: e}
    probs, errors = [], {}
    for i in range(len(images)):
        p, err = probs_or_errors(model, images[i:i + 1], channels_last, amp)
        probs += p
        if err:
            errors[i] = err[0]
    return probs, errors


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How evaluation runs: device, batching, workers, the fast paths and the image rule."""
    device: torch.device = torch.device("cpu")
    batch_size: int = 64
    num_workers: int = 0
    amp: bool = False            # float16 autocast (CUDA only)
    channels_last: bool = True   # batches in the channels-last layout (same predictions); None: as the model is
    images: ImageRule = ImageRule()


@dataclass
class ImageScore:
    image: object              # the path or PIL image as given
    prob: float = None         # P(fake); None when the image was skipped
    skipped: str = None        # why: a key of data.images.SKIP_REASONS
    truncated: bool = False    # scored as far as the file decodes
    pixels: torch.Tensor = None  # the uint8 (3, H, W) input the model saw (with ``keep_pixels``)
    size: tuple = None         # (width, height) of that input


def scored_batch(model, batch, rule, name_of, channels_last=None, amp=False):
    """(P(fake) per image of ``batch``, None where the model failed on it): ``probs_or_errors``,
    each failure reported through ``rule`` (``ImageRule.skip``: one warning naming the image
    ``name_of(dataset index)``, or an error when strict)."""
    if not len(batch.labels):
        return []
    probs, errors = probs_or_errors(model, batch.images, channels_last, amp)
    for j, err in errors.items():
        rule.skip(name_of(int(batch.indices[j])), f"the model failed on it: {one_line(err)}")
    return probs


@torch.inference_mode()
def score_images(model, images, transform=None, cfg=EvalConfig(), keep_pixels=False, window=1024):
    """Yield an ``ImageScore`` per image (paths or PIL images), in input order, as batches finish.

    Images go through the evaluation loader (``data.loaders.make_eval_loader``: ``transform``
    first -- None keeps the pixels as they are --, batches of equal sizes formed ``window``
    images at a time, ``cfg.num_workers`` decoding processes, pinned memory on CUDA), then
    ``batch_probs``. ``cfg.images`` (an ``ImageRule``) decides what happens to an image that
    cannot be used, the model's failure on one image included (``SKIP_REASONS``' "model error").
    ``keep_pixels`` keeps the uint8 input of each scored image (for figures).
    """
    images = images if isinstance(images, list) else list(images)
    loader = make_eval_loader([(im, 0) for im in images], transform, cfg.batch_size, cfg.num_workers,
                              next(model.parameters()).device, cfg.images, window)
    ready, next_index = {}, 0
    for batch in batches(loader):
        probs = scored_batch(model, batch, cfg.images, lambda i: image_name(images[i]), cfg.channels_last, cfg.amp)
        truncated, size = set(batch.truncated), (batch.images.shape[-1], batch.images.shape[-2])
        for j, i in enumerate(batch.indices.tolist()):
            if probs[j] is None:
                ready[i] = ImageScore(images[i], skipped="model error")
                continue
            ready[i] = ImageScore(images[i], probs[j], None, i in truncated,
                                  batch.images[j].clone() if keep_pixels else None, size)
        for i, why in zip(batch.skipped, batch.skipped_why):
            ready[i] = ImageScore(images[i], skipped=why)
        while next_index in ready:
            yield ready.pop(next_index)
            next_index += 1


def as_image(item):
    """A path or PIL image as it is; a uint8 numpy array as the PIL image of its pixels."""
    if isinstance(item, (str, os.PathLike, Image.Image)):
        return item
    if isinstance(item, np.ndarray):
        shape_ok = item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (1, 3, 4))
        if item.dtype != np.uint8 or not shape_ok:
            raise ValueError(f"predict_proba takes numpy images of uint8 (H, W) or (H, W, 1 / 3 / 4), got "
                             f"{item.dtype} {item.shape}")
        return Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item)
    raise TypeError(f"predict_proba takes file paths, PIL images, uint8 numpy arrays or one tensor, got "
                    f"{type(item).__name__}")


def warn_nan(name, err):
    warnings.warn(f"predict_proba: image {name} gets NaN ({err})", stacklevel=4)


@torch.inference_mode()
def predict_proba(model, images, transform=None, batch_size=32, strict=False):
    """Fake-probabilities (sigmoid of the logit) for PIL images, file paths or tensors.

    * paths / PIL images go through ``transform`` (a ``data.transforms.EvalTransform``; by
      default none, i.e. the pixels as they are -- NPR reads pixel-level traces) and are
      scored in batches of equal sizes (``score_images``). An image that cannot be used -- unreadable,
      under 2x2 pixels after the transform, above Pillow's decode limit, or one the model fails
      on -- gets NaN and one warning naming it
      (``strict=True`` raises a ``ValueError`` instead); truncated files are scored as far as
      they decode, as the reference does.
    * a numpy array (H, W) or (H, W, 1 / 3 / 4) of uint8 (scikit-image's layout; RGB order, so
      OpenCV's BGR arrays need ``[..., ::-1]``) is taken as the PIL image of those pixels.
    * a uint8 tensor (N, 3, H, W) or (3, H, W) is normalised; a float tensor is taken as already
      normalised.
    Returns a 1-D float tensor on the CPU. Anything else is a ``TypeError`` or ``ValueError``
    that says what is accepted.
    """
    if torch.is_tensor(images):
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 2:
            raise ValueError(f"predict_proba takes a tensor (N, 3, H, W) or (3, H, W) with H, W >= 2, got shape "
                             f"{tuple(images.shape)}")
        if x.dtype != torch.uint8 and not x.is_floating_point():  # int64 pixels above 255, bool, complex
            raise ValueError(f"predict_proba takes a uint8 tensor (pixels 0..255) or a normalised float tensor, got "
                             f"{x.dtype}")
        probs = torch.cat([torch.zeros(0)] + [batch_probs(model, x[i:i + batch_size])
                                              for i in range(0, len(x), batch_size)])
        for i in (~x.isfinite().flatten(1).all(1)).nonzero().flatten().tolist() if x.is_floating_point() else []:
            if strict:
                raise ValueError(f"predict_proba: image {i} of the tensor holds NaN or inf")
            probs[i] = float("nan")
            warn_nan(f"{i} of the tensor", "it holds NaN or inf")
        return probs
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    if images is None or isinstance(images, (bytes, bytearray)) or not hasattr(images, "__iter__"):
        raise TypeError(f"predict_proba takes an image or a list of them, got {type(images).__name__}")
    images = [as_image(im) for im in images]
    cfg = EvalConfig(device=next(model.parameters()).device, batch_size=batch_size,
                     channels_last=None, images=ImageRule(strict=strict, report=warn_nan))  # None: as the model is
    probs = [float("nan") if s.prob is None else s.prob for s in score_images(model, images, transform, cfg)]
    return torch.tensor(probs, dtype=torch.float32)
