"""Image transforms of the reference pipeline (``data/datasets.py`` of the reference code) as plain functions.

Train: resize to loadSize x loadSize -> optional blur / JPEG -> random crop -> random flip.
Eval:  resize (unless --no_resize) -> centre crop (unless --no_crop).
Randomness comes from an explicit ``random.Random`` so that a sample's augmentation depends
only on (seed, epoch, position): the same with any number of workers, and after a resume.

Images stay uint8 until the batch reaches the device; ``normalize_batch`` then does what
``ToTensor`` + ``Normalize`` do, in the same order, so the values are identical.
"""
import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


class ImageDecodeError(Exception):
    """An image that cannot be used: not decodable into RGB pixels, or too small for the model."""


class ImageTooSmallError(ImageDecodeError):
    """An image with a side under ``MIN_SIDE`` pixels after the transform."""


# npr_residual works on 2x2 blocks: an image needs at least one of them.
MIN_SIDE = 2


def _decode(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            elif img.mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8), "L")
            return img.convert("RGB")


DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
                 MemoryError, EOFError, TypeError)


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
    except DECODE_ERRORS as e:
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError("image has no pixels")
    rgb.info["truncated"] = truncated
    return rgb


def load_for_model(image, transform, rng=None, allow_truncated=True):
    """(uint8 (3, H, W) tensor, truncated) for an image file or PIL image, the one rule every
    scoring path applies: decode (``load_rgb``), ``transform``, then refuse an image with a side
    under ``MIN_SIDE`` pixels (``ImageTooSmallError``), since the model reads 2x2 blocks.
    ``transform`` None keeps the pixels as they are.
    """
    img = load_rgb(image, allow_truncated) if not isinstance(image, Image.Image) else image.convert("RGB")
    truncated = bool(getattr(image, "info", None) and image.info.get("truncated")) or img.info.get("truncated", False)
    x = transform(img, rng) if transform is not None else pil_to_uint8_tensor(img)
    if min(x.shape[-2:]) < MIN_SIDE:
        raise ImageTooSmallError(f"too small for the model: {x.shape[-1]}x{x.shape[-2]} pixels after the transform "
                                 f"(NPR needs at least {MIN_SIDE}x{MIN_SIDE})")
    return x, truncated


def resize_square(img, size, interp="bilinear"):
    """Resize to ``size`` x ``size`` (the reference ignores the aspect ratio).

    An image already at that size is returned as is: PIL would only copy it (ProGAN's 256 px
    images at the default loadSize 256), which is a quarter of the per-image decoding time.
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


def gaussian_blur(img, sigma):
    """Gaussian blur of each channel, rounded to uint8 (the robustness sweep's ``blur``)."""
    from scipy.ndimage import gaussian_filter

    arr = np.asarray(img).astype(np.float32)
    out = gaussian_filter(arr, sigma=(sigma, sigma, 0))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def reference_blur(img, sigma):
    """Gaussian blur as the CNNDetection code that the reference's blur option comes from:
    scipy's ``gaussian_filter`` per channel, written in place into the uint8 image.

    In place on uint8 matters: scipy filters one axis after the other, and each pass is cast
    (truncated) to uint8 before the next reads it, so the result is not a rounded float blur.
    """
    from scipy.ndimage import gaussian_filter

    arr = np.array(img, dtype=np.uint8, copy=True)
    for c in range(arr.shape[2]):
        gaussian_filter(arr[:, :, c], output=arr[:, :, c], sigma=sigma)
    return Image.fromarray(arr)


def jpeg_compress(img, quality, method="pil"):
    """Encode as JPEG at ``quality`` and decode again. ``cv2`` uses OpenCV when installed."""
    if method == "cv2":
        try:
            import cv2
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


def sample_continuous(values, rng):
    return values[0] if len(values) == 1 else rng.uniform(values[0], values[1])


class TrainTransform:
    """resize -> [blur] -> [JPEG] -> random crop -> [flip], returning a uint8 (3, H, W) tensor.

    With ``--no_resize`` (the authors' GenImage recipe) the resize is skipped: images keep
    their pixels, and those smaller than the crop are tiled up to it before the random crop.

    ``augment`` is everything after the resize; the decoded-image cache (``--cache_dir``)
    stores resized images and calls it directly, so both paths give the same tensors for the
    same random stream.

    Beyond the paper, off by default (the SAFE recipe, Li et al., KDD 2025, applies them after
    the crop and flip, in this order): random rotation (``--rotate``), colour jitter
    (``--color_jitter``) and random patch masking (``--mask_prob``); see ``successor_augment``.
    """

    def __init__(self, opt):
        self.load_size = opt.loadSize
        self.resize = not getattr(opt, "no_resize", False)
        self.crop_size = opt.cropSize
        self.flip = not opt.no_flip
        self.interps = list(opt.rz_interp)
        self.blur_prob, self.blur_sig = opt.blur_prob, list(opt.blur_sig)
        self.jpg_prob, self.jpg_method, self.jpg_qual = opt.jpg_prob, list(opt.jpg_method), list(opt.jpg_qual)
        self.rotate = getattr(opt, "rotate", 0.0)
        self.color_jitter = getattr(opt, "color_jitter", 0.0)
        self.mask_prob = getattr(opt, "mask_prob", 0.0)
        self.mask_ratio = list(getattr(opt, "mask_ratio", (0.0, 0.75)))
        self.mask_patch = getattr(opt, "mask_patch", 16)

    def __call__(self, img, rng):
        if not self.resize:
            return self.augment(img, rng)
        interp = self.interps[0] if len(self.interps) == 1 else rng.choice(self.interps)
        return self.augment(resize_square(img, self.load_size, interp), rng)

    def augment(self, img, rng):
        """Blur / JPEG / crop / flip of an already resized image (PIL or H x W x 3 uint8 array)."""
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
        if self.rotate > 0 or self.color_jitter > 0 or self.mask_prob > 0:
            arr = self.successor_augment(arr, rng)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def successor_augment(self, arr, rng):
        """Rotation, colour jitter and patch masking of the cropped H x W x 3 uint8 array.

        Rotation and jitter are torchvision's own operations with parameters drawn from ``rng``
        (what ``RandomRotation(deg)`` and ``ColorJitter(b, c, s)`` do with the global torch
        RNG), so a sample's augmentation depends only on (seed, epoch, position). torchvision
        has no patch masking (``RandomErasing`` erases one rectangle): ``patch_mask`` does it.
        """
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        if self.rotate <= 0 and self.color_jitter <= 0:  # masking only: stay on the array
            return self.mask(arr, rng)
        img = Image.fromarray(np.ascontiguousarray(arr))
        if self.rotate > 0:  # RandomRotation(deg): nearest neighbour, corners filled with black
            img = TF.rotate(img, rng.uniform(-self.rotate, self.rotate), interpolation=InterpolationMode.NEAREST,
                            fill=0)
        if self.color_jitter > 0:  # ColorJitter(b, c, s): each factor in [1-s, 1+s], in a random order
            j = self.color_jitter
            factors = [rng.uniform(max(0.0, 1.0 - j), 1.0 + j) for _ in range(3)]
            order = [0, 1, 2]
            rng.shuffle(order)
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
            for k in order:
                img = ops[k](img, factors[k])
        return self.mask(np.asarray(img), rng)

    def mask(self, arr, rng):
        if self.mask_prob > 0 and rng.random() < self.mask_prob:
            arr = patch_mask(arr, sample_continuous(self.mask_ratio, rng), self.mask_patch, rng)
        return arr


def patch_mask(arr, ratio, patch, rng):
    """Black out ``int(H * W * ratio / patch^2)`` distinct cells of a ``patch`` x ``patch`` grid,
    chosen with ``rng`` (SAFE's ``RandomMask``, on uint8 pixels: 0 is the masked value there too)."""
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


def as_pil(img):
    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))


class EvalTransform:
    """resize (unless ``no_resize``) -> centre crop (unless ``no_crop``) -> uint8 (3, H, W) tensor."""

    def __init__(self, load_size, crop_size, resize=True, crop=True, interp="bilinear", perturb=None):
        self.load_size, self.crop_size = load_size, crop_size
        self.resize, self.crop, self.interp = resize, crop, interp
        self.perturb = perturb  # optional callable on the PIL image, applied first (robustness sweeps)

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


def pil_to_uint8_tensor(img):
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def normalize_batch(x):
    """uint8 (N, 3, H, W) -> float32, exactly ``ToTensor()`` then ``Normalize(MEAN, STD)``."""
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float().div_(255.0) - mean).div_(std)
