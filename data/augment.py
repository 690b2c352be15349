"""Pixel operations behind the training augmentations and the robustness sweeps.

* ``reference_blur`` / ``jpeg_compress``: the reference's ``--blur_prob`` / ``--jpg_prob``
  augmentations (from CNNDetection, which the reference's ``data/datasets.py`` copies).
* ``gaussian_blur``: a rounded float blur, for ``test.py --perturb``.
* ``rotate_and_jitter`` / ``patch_mask``: the augmentations of the SAFE recipe (Li et al.,
  KDD 2025; code Ouxiang-Li/SAFE), with parameters drawn from an explicit ``random.Random``.
"""
import io

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


def as_pil(img):
    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))


def gaussian_blur(img, sigma):
    """Gaussian blur of each channel, rounded to uint8 (the robustness sweep's ``blur``)."""
    arr = np.asarray(img).astype(np.float32)
    out = gaussian_filter(arr, sigma=(sigma, sigma, 0))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def reference_blur(img, sigma):
    """Gaussian blur as the CNNDetection code that the reference's blur option comes from:
    scipy's ``gaussian_filter`` per channel, written in place into the uint8 image.

    In place on uint8 matters: scipy filters one axis after the other, and each pass is cast
    (truncated) to uint8 before the next reads it, so the result is not a rounded float blur.
    """
    arr = np.array(img, dtype=np.uint8, copy=True)
    for c in range(arr.shape[2]):
        gaussian_filter(arr[:, :, c], output=arr[:, :, c], sigma=sigma)
    return Image.fromarray(arr)


def jpeg_compress(img, quality, method="pil"):
    """Encode as JPEG at ``quality`` and decode again. ``cv2`` uses OpenCV when installed."""
    if method == "cv2":
        try:
            import cv2  # optional: the reference's default encoder; PIL stands in without it
        except ImportError:
            cv2 = None
        if cv2 is not None:
            bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
            ok, enc = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
            return Image.fromarray(np.ascontiguousarray(cv2.imdecode(enc, 1)[:, :, ::-1]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def rotate_and_jitter(arr, rotate, color_jitter, rng):
    """Random rotation by up to +-``rotate`` degrees, then colour jitter of strength
    ``color_jitter``, of an H x W x 3 uint8 array; returns a PIL image.

    These are torchvision's own operations with parameters drawn from ``rng`` (what
    ``RandomRotation(deg)`` and ``ColorJitter(b, c, s)`` do with the global torch RNG), so a
    sample's augmentation depends only on (seed, epoch, position).
    """
    # Imported here, not at the top: torchvision adds about 170 MiB to every process that
    # imports it (each data-loader worker too), and only these two options need it.
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = Image.fromarray(np.ascontiguousarray(arr))
    if rotate > 0:  # RandomRotation(deg): nearest neighbour, corners filled with black
        img = TF.rotate(img, rng.uniform(-rotate, rotate), interpolation=InterpolationMode.NEAREST, fill=0)
    if color_jitter > 0:  # ColorJitter(b, c, s): each factor in [1-s, 1+s], in a random order
        factors = [rng.uniform(max(0.0, 1.0 - color_jitter), 1.0 + color_jitter) for _ in range(3)]
        order = [0, 1, 2]
        rng.shuffle(order)
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        for k in order:
            img = ops[k](img, factors[k])
    return img


def patch_mask(arr, ratio, patch, rng):
    """Black out ``int(H * W * ratio / patch^2)`` distinct cells of a ``patch`` x ``patch`` grid,
    chosen with ``rng`` (SAFE's ``RandomMask``, on uint8 pixels: 0 is the masked value there too).
    torchvision has no such transform (``RandomErasing`` erases one rectangle)."""
    h, w = arr.shape[:2]
    rows, cols = h // patch, w // patch
    n = min(int(h * w * ratio / patch ** 2), rows * cols)
    if n <= 0:
        return arr
    out = np.array(arr, copy=True)
    for cell in rng.sample(range(rows * cols), n):
        top, left = (cell // cols) * patch, (cell % cols) * patch
        out[top:top + patch, left:left + patch] = 0
    return out


def sample_continuous(values, rng):
    """One value, or a uniform draw from (lo, hi)."""
    return values[0] if len(values) == 1 else rng.uniform(values[0], values[1])
