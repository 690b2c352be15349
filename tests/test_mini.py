import hashlib
import os

from data.mini import build_mini

TINY = dict(size=32, train_per_class=3, val_per_class=2, test_per_generator=3, generator_steps=5, quiet=True)


def digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for f in sorted(files):
            if f.endswith(".png"):
                h.update(f.encode())
                h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


def test_builder_layout_determinism_and_fakes(tmp_path):
    a = build_mini(str(tmp_path / "a"), seed=1, **TINY)
    b = build_mini(str(tmp_path / "b"), seed=1, **TINY)
    c = build_mini(str(tmp_path / "c"), seed=2, **TINY)
    root = tmp_path / "a"
    for cat in a["categories"]:
        for split, n in (("train", 3), ("val", 2)):
            for lab in ("0_real", "1_fake"):
                assert len(os.listdir(root / split / cat / lab)) == n
    assert sorted(os.listdir(root / "test")) == sorted(a["generators"])
    assert len(a["generators"]) == 4 and a["train_generator"] == "nn_conv"
    from PIL import Image
    import numpy as np
    leaf = root / "test" / "pixel_shuffle"
    for f in os.listdir(leaf / "0_real"):
        real = np.asarray(Image.open(leaf / "0_real" / f))
        fake = np.asarray(Image.open(leaf / "1_fake" / f))
        assert real.shape == fake.shape == (32, 32, 3) and not np.array_equal(real, fake)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    mtime = os.path.getmtime(root / "manifest.json")
    build_mini(str(root), seed=1, **TINY)  # complete build with the same settings: not rebuilt
    assert os.path.getmtime(root / "manifest.json") == mtime
