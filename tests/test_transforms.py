"""data/transforms.py: normalisation equal to torchvision's, the training transform (seeded, its
shapes), and tiling of small images."""
import random

import numpy as np
import torch

from data.transforms import EvalTransform, normalize_batch, tile_to_min_size, train_transform
from options import parse_train_args


def test_normalize_matches_torchvision():
    from torchvision import transforms as T
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x.float() / 255)
    assert torch.equal(normalize_batch(x), ref)


def test_train_transform_deterministic_per_seed_and_shapes():
    from PIL import Image
    opt = parse_train_args(["--loadSize", "40", "--cropSize", "32", "--blur_prob", "0.5",
                            "--jpg_prob", "0.5", "--jpg_method", "pil"])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    t = train_transform(opt)
    a, b = t(img, random.Random(7)), t(img, random.Random(7))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8 and torch.equal(a, b)
    outs = {t(img, random.Random(s)).sum().item() for s in range(8)}
    assert len(outs) > 1


def test_tiling_small_images():
    from PIL import Image
    img = Image.fromarray(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3))
    out = tile_to_min_size(img, 16)
    assert out.size[0] >= 16 and out.size[1] >= 16
    assert np.array_equal(np.asarray(out)[5:10, 7:14], np.asarray(img))
    assert EvalTransform(256, 16, resize=False, crop=True)(img).shape == (3, 16, 16)
