"""The training and evaluation transforms of the reference pipeline (its ``data/datasets.py``).

Train: resize to load_size x load_size -> optional blur / JPEG -> random crop -> random flip
       [-> rotation, colour jitter, patch masking: the SAFE recipe's, off by default].
Eval:  resize (unless ``resize=False``) -> centre crop (unless ``crop=False``).

Randomness comes from an explicit ``random.Random`` so that a sample's augmentation depends
only on (seed, epoch, position): the same with any number of workers, and after a resume.
Images stay uint8 until the batch reaches the device; ``normalize_batch`` then does what
``ToTensor`` + ``Normalize`` do, in the same order, so the values are identical.
"""
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .augment import as_pil, jpeg_compress, patch_mask, reference_blur, rotate_and_jitter, sample_continuous
from .images import pil_to_uint8_tensor

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


def resize_square(img, size, interp="bilinear"):
    """Resize to ``size`` x ``size`` (the reference ignores the aspect ratio).

    An image already at that size is returned as is: PIL would only copy it (ProGAN's 256 px
    images at the default loadSize 256).
    """
    if img.size == (size, size):
        return img
    return img.resize((size, size), INTERPOLATIONS[interp])


def tile_to_min_size(img, size):
    """Repeat a small image (wrap-around tiling) until both sides are at least ``size``.

    The authors' advice for images smaller than the crop (GenImage): tile, do not resize,
    since resizing smooths the very pixel correlations NPR reads.
    """
    if img.width >= size and img.height >= size:
        return img
    arr = np.asarray(img)
    reps_y = -(-size // arr.shape[0])
    reps_x = -(-size // arr.shape[1])
    return Image.fromarray(np.tile(arr, (reps_y, reps_x, 1)))


def center_crop(img, size):
    img = tile_to_min_size(img, size)
    # torchvision's CenterCrop rounds the offsets the same way.
    top = int(round((img.height - size) / 2.0))
    left = int(round((img.width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class TrainTransform:
    """resize -> [blur] -> [JPEG] -> random crop -> [flip] [-> rotate, jitter, mask], returning
    a uint8 (3, H, W) tensor. Defaults are the reference's.

    ``resize=False`` is the authors' GenImage recipe: images keep their pixels, and those
    smaller than the crop are tiled up to it before the random crop. ``augment`` is everything
    after the resize; the decoded-image cache (``data/cache.py``) stores resized images and
    calls it directly, so both paths give the same tensors for the same random stream.
    """
    load_size: int = 256
    crop_size: int = 224
    resize: bool = True
    flip: bool = True
    interps: tuple = ("bilinear",)       # one drawn per image when several
    blur_prob: float = 0.0
    blur_sig: tuple = (0.5,)             # one value, or (lo, hi) drawn uniformly
    jpg_prob: float = 0.0
    jpg_method: tuple = ("cv2",)
    jpg_qual: tuple = (75,)
    rotate: float = 0.0                  # SAFE: 180
    color_jitter: float = 0.0            # SAFE: 0.5
    mask_prob: float = 0.0               # SAFE: 0.5
    mask_ratio: tuple = (0.0, 0.75)
    mask_patch: int = 16

    def __call__(self, img, rng):
        if not self.resize:
            return self.augment(img, rng)
        interp = self.interps[0] if len(self.interps) == 1 else rng.choice(self.interps)
        return self.augment(resize_square(img, self.load_size, interp), rng)

    def augment(self, img, rng):
        """Blur / JPEG / crop / flip (/ SAFE's) of an already resized image (PIL or H x W x 3 uint8)."""
        if self.blur_prob > 0 and rng.random() < self.blur_prob:
            img = reference_blur(img, sample_continuous(self.blur_sig, rng))
        if self.jpg_prob > 0 and rng.random() < self.jpg_prob:
            img = jpeg_compress(as_pil(img), rng.choice(self.jpg_qual), rng.choice(self.jpg_method))
        arr = np.asarray(img)
        if arr.shape[0] < self.crop_size or arr.shape[1] < self.crop_size:
            arr = np.asarray(tile_to_min_size(as_pil(arr), self.crop_size))
        # The same draws, in the same order, as a PIL random crop then a left-right flip.
        top = rng.randint(0, arr.shape[0] - self.crop_size)
        left = rng.randint(0, arr.shape[1] - self.crop_size)
        arr = arr[top:top + self.crop_size, left:left + self.crop_size]
        if self.flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        # SAFE applies these after the crop and flip, in this order.
        if self.rotate > 0 or self.color_jitter > 0:
            arr = np.asarray(rotate_and_jitter(arr, self.rotate, self.color_jitter, rng))
        if self.mask_prob > 0 and rng.random() < self.mask_prob:
            arr = patch_mask(arr, sample_continuous(self.mask_ratio, rng), self.mask_patch, rng)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@dataclass(frozen=True)
class EvalTransform:
    """[perturb] -> resize (unless ``resize=False``) -> centre crop (unless ``crop=False``) ->
    uint8 (3, H, W) tensor. ``perturb`` is a callable on the PIL image (robustness sweeps)."""
    load_size: int = 256
    crop_size: int = 224
    resize: bool = True
    crop: bool = True
    interp: str = "bilinear"
    perturb: object = None

    def describe(self):
        """What the transform does, in the words of test.py's table titles."""
        steps = [f"perturbation {self.perturb.name}"] if getattr(self.perturb, "name", "none") != "none" else []
        steps.append((f"resize {self.load_size}" if self.resize else "no resize")
                     + (f", centre crop {self.crop_size}" if self.crop else ", no crop"))
        return "; ".join(steps)

    def output_size(self, width, height):
        """(width, height) this transform produces for an input of that size."""
        if self.crop:
            return self.crop_size, self.crop_size
        if self.resize:
            return self.load_size, self.load_size
        return width, height

    def __call__(self, img, rng=None):
        if self.perturb is not None:
            img = self.perturb(img)
        if self.resize:
            img = resize_square(img, self.load_size, self.interp)
        if self.crop:
            img = center_crop(img, self.crop_size)
        return pil_to_uint8_tensor(img)


def normalize_batch(x):
    """uint8 (N, 3, H, W) -> float32, exactly ``ToTensor()`` then ``Normalize(MEAN, STD)``."""
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float().div_(255.0) - mean).div_(std)


def train_transform(opt):
    """The training transform of train.py's options ``opt`` (the reference's, plus the options
    beyond the paper)."""
    return TrainTransform(load_size=opt.loadSize, crop_size=opt.cropSize, resize=not opt.no_resize,
                          flip=not opt.no_flip, interps=opt.rz_interp, blur_prob=opt.blur_prob,
                          blur_sig=opt.blur_sig, jpg_prob=opt.jpg_prob, jpg_method=opt.jpg_method,
                          jpg_qual=opt.jpg_qual, rotate=opt.rotate, color_jitter=opt.color_jitter,
                          mask_prob=opt.mask_prob, mask_ratio=opt.mask_ratio, mask_patch=opt.mask_patch)


def val_transform(opt):
    """Validation (and the moving average's BatchNorm recompute) of train.py's options ``opt``:
    resize to loadSize (also with --no_resize, as the reference's val), centre crop;
    --val_crop_only: the centre crop alone (SAFE's)."""
    return EvalTransform(opt.loadSize, opt.cropSize, resize=not opt.val_crop_only, crop=True, interp=opt.rz_interp[0])
