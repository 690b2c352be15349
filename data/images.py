"""Decoding image files, and the one rule every path applies to an image it cannot use.

Training, validation, test.py, predict.py and the notebook API all read images through
``ImageRule.load``: decode (``load_rgb``), transform, then refuse an image with a side under
``MIN_SIDE`` pixels. An unusable image is a logged skip (an error with ``strict``); a truncated
file is scored as far as it decodes, as the reference does, unless ``skip_truncated``.
"""
import os
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from util import log, UserError

from .discovery import unopenable


# npr_residual works on 2x2 blocks: an image needs at least one of them.
MIN_SIDE = 2
# The hard decode limit: Pillow's own decompression-bomb limit (about 89.5 Mpx, e.g. 10000 x
# 8900). A larger image is refused from its header, before any pixel is decoded; anything up
# to it is decoded and, above networks.detector.PIXEL_BUDGET, scored in tiles.
MAX_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS


# Why an image gets no score, as the rows of predict.py and the demo say it, with what the demo
# tells its user. Every path that skips an image gives one of these.
SKIP_REASONS = {
    "unreadable": "cannot be read as an image (empty, corrupt, not an image, or truncated before any pixel)",
    "too small": "too small: NPR needs at least 2x2 pixels",
    "too large": "too large to decode (above Pillow's 89.5 Mpx limit): downscale it first",
    "model error": "the model failed on it (the log names the error)",
}


class ImageDecodeError(Exception):
    """An image that cannot be used: not decodable into RGB pixels, or too small for the model."""


class ImageTooSmallError(ImageDecodeError):
    """An image with a side under ``MIN_SIDE`` pixels after the transform."""


class ImageTooLargeError(ImageDecodeError):
    """An image above ``MAX_DECODE_PIXELS``, refused from its header before decoding."""


class UnusableImageError(UserError, ValueError):
    """Raised instead of a skip when the rule is ``strict`` (``--strict_images``)."""


STRIP_PIXELS = 1 << 22  # large images are copied out of PIL, and converted, in strips of this many pixels
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
                 MemoryError, EOFError, TypeError)


def to_rgb(img):
    """An RGB image of ``img`` (any mode Pillow opens), the reference's ``convert('RGB')``, except
    that 16- and 32-bit greyscale (``I;16``, ``I``, ``F``) are scaled to 8 bits first
    (``grey_to_8bit``), where ``convert`` would clip them to white. ``img`` itself when it is RGB
    already."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(grey_to_8bit(img), "L").convert("RGB")
    if img.mode == "La":  # premultiplied alpha: Pillow converts it to RGB only through LA
        img = img.convert("LA")
    return img.convert("RGB")


def grey_to_8bit(img):
    """The 8-bit grey values of a 16- or 32-bit greyscale image: 16-bit scaled from 0..65535, 32-bit
    integers from 0..255 (or 0..65535 when a value is above 255), floats from 0..1 (or taken as
    they are when a value is above 1; NaN is black). Computed in float64 strips of ``STRIP_PIXELS``,
    so that an image at the decode limit needs no more memory than an 8-bit one."""
    step = max(1, STRIP_PIXELS // img.width)

    def strips():
        for top in range(0, img.height, step):
            arr = np.asarray(img.crop((0, top, img.width, min(img.height, top + step))), dtype=np.float64)
            yield top, (np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0) if img.mode == "F" else arr)
    if img.mode.startswith("I;16"):
        top_value = 65535.0
    else:
        peak = max((arr.max(initial=0) for _, arr in strips()), default=0)
        top_value = 65535.0 if img.mode == "I" and peak > 255 else 255.0
        scale = 255.0 if img.mode == "F" and peak <= 1.0 else 1.0
    out = np.empty((img.height, img.width), dtype=np.uint8)
    for top, arr in strips():
        scaled = arr * scale + 0.5 if img.mode == "F" else arr / top_value * 255.0 + 0.5
        out[top:top + len(arr)] = np.clip(scaled, 0, 255).astype(np.uint8)
    return out


def file_released(img):
    """Whether ``img.load()`` let go of its file, as it does for most single-frame formats;
    some (ICO, IM) keep it open until ``close()``."""
    return all(getattr(getattr(img, attr, None), "closed", True) for attr in ("fp", "_fp"))


def _decode(path):
    kind = unopenable(path)
    if kind is not None:  # a FIFO would block, /dev/zero would never end
        raise ImageDecodeError(f"not a regular file ({kind}): never opened")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here instead
        # Pillow's notes on metadata (a palette's transparency, corrupt EXIF) change no pixel used here and
        # name no file: once per image, they buried a scan's own lines.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        img = Image.open(path)
        keep = False  # whether the opened image itself is returned (then it must stay open)
        try:
            if img.width * img.height > MAX_DECODE_PIXELS:
                raise ImageTooLargeError(f"too large: {img.width}x{img.height} pixels is above the decode limit of "
                                         f"{MAX_DECODE_PIXELS / 1e6:.1f} Mpx; downscale it first (this discards "
                                         "some of the traces NPR reads)")
            img.load()
            keep = img.mode == "RGB" and not getattr(img, "is_animated", False) and file_released(img)
            if keep:
                return img  # convert("RGB") would only copy a photo's pixels
            return img.convert("RGB") if img.mode == "RGB" else to_rgb(img)  # the first frame, as a copy
        finally:
            if not keep:
                img.close()


def decoded_nothing(rgb):
    """Whether a truncated file's pixels are all one colour: what Pillow fills in for data that
    is not there (black for PNG, grey for JPEG), so nothing of the image was decoded."""
    return all(lo == hi for lo, hi in rgb.getextrema())


def load_rgb(path, allow_truncated=True):
    """Decode an image file into an RGB PIL image, as the reference does (``convert('RGB')``).

    16-bit and 32-bit greyscale are scaled to 8 bits first (``convert`` would clip them to
    white). A truncated file is decoded as far as it goes, as the reference's
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` does (the missing part is black), and marked
    ``img.info["truncated"] = True``; ``allow_truncated=False`` refuses it instead. Anything
    else unreadable (empty, not an image, a decompression bomb) raises ``ImageDecodeError``.
    """
    truncated = False
    try:
        try:
            rgb = _decode(path)
        except OSError as e:
            # A file PIL can identify but not finish is truncated; one it cannot identify is not an image.
            if not allow_truncated or isinstance(e, UnidentifiedImageError):
                raise
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                rgb = _decode(path)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
            truncated = True
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as e:  # above twice Pillow's limit: refused by Image.open itself
        raise ImageTooLargeError(f"too large: {e}") from None
    except DECODE_ERRORS as e:
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError("image has no pixels")
    if truncated and decoded_nothing(rgb):
        raise ImageDecodeError(f"truncated before any pixel data: the file holds a header for {rgb.width}x"
                               f"{rgb.height} pixels and nothing that decodes")
    rgb.info["truncated"] = truncated
    return rgb


def pil_to_uint8_tensor(img):
    """(3, H, W) uint8 view of one copy of an RGB image's pixels (channels-last in memory:
    batching copies it anyway, and a lone large image is used as it is). A large image is
    copied strip by strip: ``np.array(img)`` would hold a second full copy on the way."""
    if img.width * img.height <= STRIP_PIXELS:
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    arr = np.empty((img.height, img.width, 3), dtype=np.uint8)
    step = max(1, STRIP_PIXELS // img.width)
    for top in range(0, img.height, step):
        arr[top:top + step] = np.asarray(img.crop((0, top, img.width, min(img.height, top + step))))
    return torch.from_numpy(arr).permute(2, 0, 1)


def load_for_model(image, transform, rng=None, allow_truncated=True):
    """(uint8 (3, H, W) tensor, truncated) for an image file or PIL image: decode, ``transform``
    (None keeps the pixels as they are), then refuse a side under ``MIN_SIDE`` pixels
    (``ImageTooSmallError``), since the model reads 2x2 blocks."""
    if isinstance(image, Image.Image):
        try:
            img = to_rgb(image)
        except DECODE_ERRORS as e:  # a mode Pillow cannot convert (LAB, say), or an image closed already
            raise ImageDecodeError(f"{type(e).__name__}: {e}") from None
    else:
        img = load_rgb(image, allow_truncated)
    truncated = bool(getattr(image, "info", None) and image.info.get("truncated")) or img.info.get("truncated", False)
    x = transform(img, rng) if transform is not None else pil_to_uint8_tensor(img)
    if min(x.shape[-2:]) < MIN_SIDE:
        raise ImageTooSmallError(f"too small for the model: {x.shape[-1]}x{x.shape[-2]} pixels after the transform "
                                 f"(NPR needs at least {MIN_SIDE}x{MIN_SIDE})")
    return x, truncated


def image_name(image):
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"PIL image {getattr(image, 'size', '')}"


def log_skip(name, err):
    log.warning("skipping image %s (%s)", name, err)


@dataclass(frozen=True)
class ImageRule:
    """What happens to an image that cannot be used (``--strict_images``, ``--skip_truncated``).

    ``report(name, error)`` tells the user about a skipped image (default: one log warning);
    the notebook API passes its own so that the message is a Python warning.
    """
    strict: bool = False
    skip_truncated: bool = False
    report: object = log_skip

    def load(self, image, transform, rng=None):
        """(uint8 tensor or None, truncated, why it was skipped: None or a key of ``SKIP_REASONS``)."""
        try:
            x, truncated = load_for_model(image, transform, rng, allow_truncated=not self.skip_truncated)
        except ImageDecodeError as e:
            self.skip(image_name(image), e)
            return None, False, ("too small" if isinstance(e, ImageTooSmallError) else
                                 "too large" if isinstance(e, ImageTooLargeError) else "unreadable")
        if truncated:
            log.warning("image %s is truncated: scored as far as it decodes, as the reference does "
                        "(--skip_truncated skips such files)", image_name(image))
        return x, truncated, None

    def skip(self, name, err):
        """Skip an unusable image: report it, or raise ``UnusableImageError`` when strict."""
        if self.strict:
            raise UnusableImageError(f"cannot use image '{name}' ({err}); remove it or drop --strict_images")
        self.report(name, err)


class Item(NamedTuple):
    """One sample as a dataset gives it: the uint8 image tensor (None when it cannot be used), its
    label, its index in the dataset, whether the file was truncated, and why it was skipped (a
    ``SKIP_REASONS`` key, or None)."""
    image: object
    label: int
    index: int
    truncated: bool = False
    why: str = None
