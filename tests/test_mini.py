import hashlib
import os

import pytest

from data.mini import build_mini

pytestmark = pytest.mark.slow  # builds NPR-mini (trains its generators)

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
    build_mini(str(tmp_path / "b"), seed=1, **TINY)
    build_mini(str(tmp_path / "c"), seed=2, **TINY)
    root = tmp_path / "a"
    for cat in a["categories"]:
        for split, n in (("train", 3), ("val", 2)):
            for lab in ("0_real", "1_fake"):
                assert len(os.listdir(root / split / cat / lab)) == n
    assert sorted(os.listdir(root / "test")) == sorted(a["generators"])
    assert len(a["generators"]) == 5 and a["train_generator"] == "nn_conv"
    assert a["third_party"]["cyclegan_vintage"]["package"] == "vintagify" and a["third_party"]["cyclegan_vintage"]["version"]
    import numpy as np
    from PIL import Image
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


def test_third_party_gan_split_has_the_counts_and_the_content_of_its_real_images(tmp_path):
    import numpy as np
    from PIL import Image
    m = build_mini(str(tmp_path / "m"), seed=1, **dict(TINY, test_per_generator=6))
    leaf = tmp_path / "m" / "test" / "cyclegan_vintage"
    names = sorted(os.listdir(leaf / "0_real"))
    assert names == sorted(os.listdir(leaf / "1_fake")) and len(names) == 6 == m["counts_per_class"]["test/cyclegan_vintage"]
    real = np.stack([np.asarray(Image.open(leaf / "0_real" / n), dtype=np.float64) for n in names])
    fake = np.stack([np.asarray(Image.open(leaf / "1_fake" / n), dtype=np.float64) for n in names])
    assert real.shape == fake.shape == (6, 32, 32, 3) and not np.array_equal(real, fake)
    # matched content: each fake is closer to its own real window than to any other one
    z = lambda a: (a - a.mean(axis=(1, 2, 3), keepdims=True)).reshape(len(a), -1)  # noqa: E731
    dist = np.abs(z(fake)[:, None] - z(real)[None]).mean(axis=2)
    assert (np.argmin(dist, axis=1) == np.arange(6)).all()


def test_missing_package_is_one_line_and_the_rest_builds_then_it_is_added(tmp_path, monkeypatch, caplog):
    import sys
    monkeypatch.setitem(sys.modules, "vintagify.generator", None)  # the import fails
    m = build_mini(str(tmp_path / "a"), seed=1, **TINY)
    assert m["generators"] == ["nn_conv", "bilinear_conv", "transposed_conv", "pixel_shuffle"]
    warned = [r.getMessage() for r in caplog.records if "cyclegan_vintage" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "vintagify" in warned[0]
    assert not os.path.exists(tmp_path / "a" / "test" / "cyclegan_vintage")
    monkeypatch.undo()
    m = build_mini(str(tmp_path / "a"), seed=1, **TINY)  # the package is back: only its split is added
    assert "cyclegan_vintage" in m["generators"] and "cyclegan_vintage" not in m.get("unavailable", {})
    build_mini(str(tmp_path / "b"), seed=1, **TINY)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")



def test_builds_started_at_once_or_killed_leave_one_complete_benchmark(tmp_path, monkeypatch):
    """test.py and train.py started together on a fresh machine build NPR-mini once; a build
    killed half way leaves nothing where the scripts look, and the next one completes."""
    import subprocess
    import sys

    import data.mini as mini
    from conftest import ROOT
    shared = str(tmp_path / "shared")
    code = f"from data.mini import build_mini; build_mini({shared!r}, seed=1, **{TINY!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert not os.path.exists(shared + ".partial")

    killed = str(tmp_path / "killed")
    save, calls = mini.save_pngs, []

    def killed_after_two(folder, prefix, images):
        calls.append(folder)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return save(folder, prefix, images)
    monkeypatch.setattr(mini, "save_pngs", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_mini(killed, seed=1, **TINY)
    assert not os.path.exists(killed)  # no half benchmark where test.py looks
    monkeypatch.setattr(mini, "save_pngs", save)
    build_mini(killed, seed=1, **TINY)
    assert digest(killed) == digest(shared)
