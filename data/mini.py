"""NPR-mini: a small benchmark built on the spot, so the main job runs anywhere in minutes.

Real images: patches of public-domain / CC0 / CC-BY photographs shipped inside
scikit-image and scikit-learn (listed in ``PHOTOS``; licences in docs/npr-mini.md).
Fake images: outputs of four small auto-encoders, one per up-sampling operator, trained
here on the real training patches. Each fake is the generator's reconstruction of a real
patch, and both are saved as PNG, so real and fake share content and file format: a
detector can only win on the traces the up-sampling left.

The test split also holds real, third-party GANs whose trained weights ship inside a pip
package (``THIRD_PARTY``): ``cyclegan_vintage`` is the CycleGAN ResNet generator of the
``vintagify`` package, which translates the same real test patches. A build that cannot load
one says so in one line and builds the rest; a later build adds it when it can.

The paper's protocol in miniature: train on the nearest-neighbour generator (the ProGAN
analogue) only; the test split holds every generator.

Built by ``build_mini`` (train.py and test.py call it on first use; ``python -m tools.mini``
builds it by hand). Splits: every photo is cut into three disjoint vertical strips (60 / 15 / 25 % of its width)
for train / val / test; patches never cross a strip, so no test pixel is seen in training,
while every split covers every category.
"""
import importlib.metadata
import json
import os
import random
import shutil

import numpy as np
import skimage.data
import sklearn.datasets
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from files import check_output, waiting_lock, write_json_atomically

from util import log, UserError

from .benchmarks import MINI_GENERATORS, MINI_TEST_PER_GENERATOR, MINI_THIRD_PARTY


# category -> (package, file). All RGB or greyscale photographs (greyscale become RGB).
PHOTOS = {
    "person": [("skimage", "astronaut.png"), ("skimage", "camera.png")],
    "animal": [("skimage", "chelsea.png")],
    "object": [("skimage", "coffee.png"), ("skimage", "rocket.jpg")],
    "nature": [("sklearn", "china.jpg"), ("sklearn", "flower.jpg"), ("skimage", "grass.png"),
               ("skimage", "gravel.png"), ("skimage", "brick.png")],
}
SPLITS = {"train": (0.0, 0.60), "val": (0.60, 0.75), "test": (0.75, 1.0)}

# Trained generators that come inside pip packages: where they come from, for the manifest
# and the docs. Each is loaded by ``load_third_party`` (no download: the weights are in the wheel).
THIRD_PARTY = {
    "cyclegan_vintage": {
        "package": "vintagify", "weights": "resources/G_A2B_epoch33.pth", "licence": "MIT",
        "authors": "Yusong Zhao, Fangyi Wang",
        "architecture": "CycleGAN ResNet generator (Zhu et al. 2017): 2 stride-2 convolutions down, 9 residual "
                        "blocks, 2 transposed convolutions up (x2 each), as ForenSynths' CycleGAN",
        "trained_on": "unpaired modern and vintage photographs (the package's A2B direction: modern -> vintage), "
                      "512 px crops",
    },
}
assert set(THIRD_PARTY) == set(MINI_THIRD_PARTY)
TRAIN_GENERATOR = "nn_conv"


def photo_path(package, name):
    if package == "skimage":
        return os.path.join(skimage.data.data_dir, name)
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)


def load_photos():
    """category -> list of (name, HxWx3 uint8 array)."""
    out = {}
    for cat, items in PHOTOS.items():
        out[cat] = []
        for pkg, name in items:
            path = photo_path(pkg, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"sample photo '{path}' is missing; reinstall {pkg} "
                                        "(pip install -r requirements.txt)")
            with Image.open(path) as im:
                out[cat].append((name, np.asarray(im.convert("RGB"))))
    return out


def split_strip(arr, split):
    lo, hi = SPLITS[split]
    w = arr.shape[1]
    return arr[:, int(round(lo * w)):int(round(hi * w))]


def cut_patches(photos, split, n, size, rng):
    """``n`` random ``size`` x ``size`` patches from the ``split`` strips of the given photos."""
    strips = [split_strip(a, split) for _, a in photos]
    strips = [s for s in strips if s.shape[0] >= size and s.shape[1] >= size]
    out = []
    for i in range(n):
        s = strips[i % len(strips)]
        y, x = rng.randint(0, s.shape[0] - size), rng.randint(0, s.shape[1] - size)
        out.append(s[y:y + size, x:x + size])
    return np.stack(out)


def cut_pairs(reals, fakes, n, size, rng):
    """``n`` random ``size`` x ``size`` windows, each cut at the same place from a real strip and
    its translation."""
    pairs = [(r, f) for r, f in zip(reals, fakes) if r.shape[0] >= size and r.shape[1] >= size]
    real, fake = [], []
    for i in range(n):
        r, f = pairs[i % len(pairs)]
        y, x = rng.randint(0, r.shape[0] - size), rng.randint(0, r.shape[1] - size)
        real.append(r[y:y + size, x:x + size])
        fake.append(f[y:y + size, x:x + size])
    return np.stack(real), np.stack(fake)


def upsampler(kind, cin, cout):
    """A x2 up-sampling layer of the given kind: the trace NPR is meant to pick up."""
    if kind == "nn_conv":  # ProGAN-style
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "bilinear_conv":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                             nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "transposed_conv":
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    if kind == "pixel_shuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    raise ValueError(f"unknown up-sampling kind '{kind}'")


class PatchAutoEncoder(nn.Module):
    """A small auto-encoder: one stride-2 convolution down, one x2 up-sampling layer back.

    The code is wider than the image (32 channels at half resolution), so reconstructions
    are close to the input: what differs is mostly the trace of the up-sampling layer.
    """

    def __init__(self, kind, width=32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(
            upsampler(kind, width, width), nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x):
        return torch.sigmoid(self.decoder(self.encoder(x)))


def to_float(patches):
    return torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x):
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_generator(kind, patches, steps, seed, batch_size=32, crop=16, lr=5e-3, progress=None):
    """Fit an auto-encoder to random ``crop``-pixel windows of the patches (it is fully
    convolutional, so small windows train it for the full patch size at a fraction of the cost)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = PatchAutoEncoder(kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    data = to_float(patches)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        y, x = (int(v) for v in torch.randint(0, data.shape[-1] - crop + 1, (2,), generator=g))
        batch = data[idx, :, y:y + crop, x:x + crop]
        loss = F.l1_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sched.step()
        if progress is not None:
            progress.update(1)
    return model.eval()


class GeneratorUnavailable(Exception):
    """A third-party generator whose package is missing or whose weights do not load."""


def load_third_party(name):
    """(a function from uint8 patches to uint8 fakes, its provenance) for a ``THIRD_PARTY`` name."""
    info = dict(THIRD_PARTY[name])
    try:
        # Optional: the package brings the trained weights; without it the rest of NPR-mini builds.
        import vintagify.generator as vintagify_generator
        info["version"] = importlib.metadata.version(info["package"])
    except Exception as e:  # a missing package, or one that fails on import: either way, skip it
        raise GeneratorUnavailable(f"the {info['package']} package cannot be imported ({type(e).__name__}: {e}); "
                                   "pip install -r requirements.txt") from None
    weights = os.path.join(os.path.dirname(vintagify_generator.__file__), info["weights"])
    model = vintagify_generator.ResnetGenerator()
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:
        raise GeneratorUnavailable(f"the weights {weights} of {info['package']} do not load ({type(e).__name__})") from None
    model.eval()

    @torch.no_grad()
    def translate(images, batch_size=50):
        # The package's own pre- and post-processing: pixels to [-1, 1], tanh output back to [0, 1].
        x = to_float(np.ascontiguousarray(images)) * 2.0 - 1.0
        return np.concatenate([to_uint8((model(x[i:i + batch_size]) + 1.0) / 2.0)
                               for i in range(0, len(x), batch_size)])
    return translate, info


def add_third_party(root, manifest):
    """Write the test split of every third-party generator that loads and is not built yet;
    each gets its own windows (its own seed), so the result does not depend on when it is added."""
    config = manifest["config"]
    photos = load_photos()
    all_photos = [p for c in sorted(photos) for p in photos[c]]
    for k, name in enumerate(MINI_THIRD_PARTY):
        if name in manifest["generators"]:
            continue
        try:
            translate, info = load_third_party(name)
        except GeneratorUnavailable as e:
            log.warning("NPR-mini: %s not built: %s", name, e)
            manifest.setdefault("unavailable", {})[name] = str(e)
            continue
        # Translate each photo's whole test strip (the generator was trained on large images),
        # then cut the same windows out of the real and the translated strip.
        strips = [split_strip(a, "test") for _, a in all_photos]
        strips = [st[:st.shape[0] // 4 * 4, :st.shape[1] // 4 * 4] for st in strips]
        fakes = [translate(st[None])[0] for st in strips]
        rng = random.Random(config["seed"] * 1000 + 17 + k)
        real, fake = cut_pairs(strips, fakes, config["test_per_generator"], config["size"], rng)
        leaf = os.path.join(root, "test", name)
        save_pngs(os.path.join(leaf, "0_real"), name, real)
        save_pngs(os.path.join(leaf, "1_fake"), name, fake)
        manifest["generators"].append(name)
        manifest["counts_per_class"][f"test/{name}"] = len(real)
        manifest.setdefault("third_party", {})[name] = info
        manifest.get("unavailable", {}).pop(name, None)
    write_manifest(root, manifest)
    return manifest


def write_manifest(root, manifest):
    write_json_atomically(manifest, os.path.join(root, "manifest.json"))


@torch.no_grad()
def generate(model, patches, batch_size=128):
    data = to_float(patches)
    return np.concatenate([to_uint8(model(data[i:i + batch_size])) for i in range(0, len(data), batch_size)])


def save_pngs(folder, prefix, images):
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(os.path.join(folder, f"{prefix}_{i:04d}.png"))


def is_built(root, config):
    try:
        with open(os.path.join(root, "manifest.json")) as f:
            return json.load(f).get("config") == config
    except (OSError, ValueError):
        return False


def build_mini(root, seed=0, size=48, train_per_class=320, val_per_class=50, test_per_generator=MINI_TEST_PER_GENERATOR,
               generator_steps=1000, rebuild=False, quiet=False):
    """Write NPR-mini to ``root`` (skipped when a complete build with the same settings exists).

    Deterministic for a given seed. Returns the manifest dict.
    """
    config = {"seed": seed, "size": size, "train_per_class": train_per_class, "val_per_class": val_per_class,
              "test_per_generator": test_per_generator, "generator_steps": generator_steps}
    root = os.path.normpath(root)
    if os.path.lexists(root) and not os.path.isdir(root):
        raise UserError(f"NPR-mini's folder '{root}' is a file; remove it or choose another folder")
    check_output(os.path.dirname(os.path.abspath(root)), "the folder of NPR-mini", folder=True)
    # Two commands started at once on a fresh machine (test.py and train.py): one builds, the
    # other waits and finds it built.
    with waiting_lock(os.path.join(os.path.dirname(os.path.abspath(root)), f".{os.path.basename(root)}.lock"),
                      f"building NPR-mini in {root}"):
        if not rebuild and is_built(root, config):
            with open(os.path.join(root, "manifest.json")) as f:
                manifest = json.load(f)
            if all(name in manifest["generators"] for name in MINI_THIRD_PARTY):
                return manifest
            return add_third_party(root, manifest)
        # Written beside the old build and swapped in whole: a killed build leaves no half
        # dataset where the scripts look, and the old one stays until the new one is complete.
        partial = root + ".partial"
        if os.path.exists(partial):
            shutil.rmtree(partial)
        manifest = write_mini(partial, config, quiet)
        if os.path.exists(root):
            shutil.rmtree(root)
        os.rename(partial, root)
        return manifest


def write_mini(root, config, quiet):
    """Write a fresh NPR-mini with ``config`` to ``root``; returns its manifest."""
    seed, size, generator_steps = config["seed"], config["size"], config["generator_steps"]
    train_per_class, val_per_class = config["train_per_class"], config["val_per_class"]
    test_per_generator = config["test_per_generator"]
    rng = random.Random(seed)
    photos = load_photos()
    cats = sorted(photos)
    all_photos = [p for c in cats for p in photos[c]]
    train_real = {c: cut_patches(photos[c], "train", train_per_class, size, rng) for c in cats}
    val_real = {c: cut_patches(photos[c], "val", val_per_class, size, rng) for c in cats}

    bar = tqdm(total=generator_steps * len(MINI_GENERATORS), desc="NPR-mini: training generators",
               disable=quiet, unit="step")
    pool = np.concatenate([train_real[c] for c in cats])
    gens = {k: train_generator(k, pool, generator_steps, seed * 100 + i, progress=bar)
            for i, k in enumerate(MINI_GENERATORS)}
    bar.close()

    counts = {}
    steps = [("train", c) for c in cats] + [("val", c) for c in cats] + [("test", g) for g in MINI_GENERATORS]
    for split, name in tqdm(steps, desc="NPR-mini: writing images", disable=quiet):
        if split == "test":
            real = cut_patches(all_photos, "test", test_per_generator, size, rng)
            gen = gens[name]
        else:
            real = (train_real if split == "train" else val_real)[name]
            gen = gens[TRAIN_GENERATOR]
        leaf = os.path.join(root, split, name)
        save_pngs(os.path.join(leaf, "0_real"), name, real)
        save_pngs(os.path.join(leaf, "1_fake"), name, generate(gen, real))
        counts[f"{split}/{name}"] = len(real)
    manifest = {"config": config, "categories": cats, "generators": list(MINI_GENERATORS),
                "train_generator": TRAIN_GENERATOR, "counts_per_class": counts,
                "photos": {c: [n for _, n in v] for c, v in PHOTOS.items()}}
    manifest = add_third_party(root, manifest)
    return manifest
