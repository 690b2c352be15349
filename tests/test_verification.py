"""data/verification.py and tools.verify: counts against the published ones, broken and duplicate
files, format bias between real and fake, link loops, and hashing in chunks."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import run_script, write_leaf
from PIL import Image

from data.verification import format_report, jpeg_quality, verify
from networks import resnet50


def test_the_verifier_hashes_in_chunks(tmp_path, monkeypatch):
    """A large non-image is hashed 1 MiB at a time, not read whole into memory."""

    import data.verification as verify_module
    data = os.urandom(1 << 20) * 3 + b"tail"
    (tmp_path / "big.png").write_bytes(data)
    sizes = []

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    import files  # the verifier hashes through files.sha256_of
    monkeypatch.setattr(files, "open", lambda p, mode="r": Spy(open(p, mode)), raising=False)
    info = verify_module.inspect_file(str(tmp_path / "big.png"))
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["status"] == "unreadable"
    assert sizes and all(0 < n <= 1 << 20 for n in sizes)


def test_the_verifier_names_a_link_loop_and_counts_each_image_once(tmp_path):
    from conftest import write_leaf

    from data.verification import verify
    gen = tmp_path / "suite" / "gen"
    write_leaf(str(gen), 2, 2)
    os.symlink("..", gen / "1_fake" / "up")  # back to gen: its 0_real would be counted as fakes too
    report = verify(str(tmp_path), (), workers=1)
    g = report["suites"][0]["generators"][0]
    assert (g["real"]["n"], g["fake"]["n"]) == (2, 4)  # 1_fake's own two, and 0_real's two through the link
    assert g["repeated_folder_links"] == [str(gen / "1_fake" / "up" / "1_fake")]
    assert "1 links to folders already listed (not counted twice)" in g["verdict"]


# ----------------------------------------------------------------------------- the verifier

def save(path, arr, fmt, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, fmt, **kw)


def noise(seed, size=(32, 32)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.mark.parametrize("quality", [30, 75, 90, 95])
def test_jpeg_quality_is_estimated_from_the_quantisation_tables(tmp_path, quality):
    path = str(tmp_path / "q.jpg")
    save(path, noise(0), "JPEG", quality=quality)
    with Image.open(path) as img:
        assert abs(jpeg_quality(img.quantization) - quality) <= 1


@pytest.fixture
def suites(tmp_path):
    root = tmp_path / "datasets"
    gg = root / "GANGen-Detection"
    for i in range(3):  # AttGAN: real JPEG, fake PNG -> format bias (and not the published 2k)
        save(str(gg / "AttGAN" / "0_real" / f"{i}.jpg"), noise(i), "JPEG", quality=80)
        save(str(gg / "AttGAN" / "1_fake" / f"{i}.png"), noise(10 + i), "PNG")
    for i in range(4):  # BEGAN: clean PNGs of one size, plus a duplicate and a truncated file
        save(str(gg / "BEGAN" / "0_real" / f"{i}.png"), noise(20 + i), "PNG")
        save(str(gg / "BEGAN" / "1_fake" / f"{i}.png"), noise(30 + i), "PNG")
    shutil.copy(gg / "BEGAN" / "0_real" / "0.png", gg / "BEGAN" / "1_fake" / "copy.png")
    good = (gg / "BEGAN" / "1_fake" / "1.png").read_bytes()
    (gg / "BEGAN" / "1_fake" / "cut.png").write_bytes(good[:len(good) // 2])
    (gg / "BEGAN" / "0_real" / "broken.png").write_bytes(b"not an image")
    write_leaf(str(gg / "GANimation"), 1, 1, size=(16, 16))  # not in the registry: an extra folder
    # a training root whose test split repeats a training file
    write_leaf(str(root / "train" / "car"), 2, 2, size=(16, 16), seed=1)
    write_leaf(str(root / "test" / "progan"), 2, 2, size=(16, 16), seed=2)
    shutil.copy(root / "train" / "car" / "0_real" / os.listdir(root / "train" / "car" / "0_real")[0],
                root / "test" / "progan" / "0_real" / "leak.png")
    return root


def test_verifier_flags_counts_format_bias_duplicates_and_broken_files(suites):
    report = verify(str(suites), workers=1)
    gg = next(s for s in report["suites"] if s["suite"] == "GANGen-Detection")
    gens = {g["generator"]: g for g in gg["generators"]}
    att, began = gens["AttGAN"], gens["BEGAN"]
    assert att["count_status"] == "mismatch" and "6 images, published 2000" in att["count"]
    assert any("format bias: 100% of real and 0% of fake images are JPEG" in b for b in att["bias"])
    assert att["real"]["jpeg_quality_mean"] == pytest.approx(80, abs=1)
    assert len(began["duplicates"]) == 1 and "1 duplicate file" in began["verdict"]
    assert began["truncated_files"][0].endswith("cut.png") and began["unreadable_files"][0].endswith("broken.png")
    assert not began["bias"]
    assert "GANimation" in gg["extra"] and "SNGAN" in gg["missing"]
    assert any(any(p.endswith("leak.png") for p in group) for group in report["cross_split_duplicates"])
    text = format_report(report)
    assert "format bias" in text and "published 2000" in text and "extra folders" in text


@pytest.mark.slow
def test_verify_cli_prints_the_table_and_writes_json(suites, tmp_path):
    out = str(tmp_path / "report.json")
    r = run_script("-m", "tools.verify", "--dataroot", str(suites), "--suites", "GANGen-Detection",
                   "--json", out, "--num_threads", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "AttGAN" in r.stdout and "format bias" in r.stdout and "published" in r.stdout
    data = json.load(open(out))
    assert [s["suite"] for s in data["suites"]] == ["GANGen-Detection"]


@pytest.mark.slow
def test_test_py_checks_the_data_first(suites, tmp_path):

    torch.save(resnet50().state_dict(), str(tmp_path / "m.pth"))
    res = str(tmp_path / "res")
    r = run_script("test.py", "--dataroot", str(suites), "--model_path", str(tmp_path / "m.pth"),
                   "--suites", "GANGen-Detection", "--check_data", "--gpu_ids", "-1", "--num_threads", "0",
                   "--results_dir", res, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Data check" in r.stdout and "format bias" in r.stdout and "AttGAN" in r.stdout
    assert json.load(open(os.path.join(res, "data_check.json")))["suites"][0]["suite"] == "GANGen-Detection"
