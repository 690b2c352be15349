"""data/images.py: decoding every file a user can bring, or naming why not: a corpus of broken files,
decompression bombs, images above the decode limit refused before decoding, and the loader's skips,
counts and strict mode."""
import io
import os

import numpy as np
import pytest
import torch
from hypothesis import given, HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from data.discovery import make_samples
from data.images import ImageDecodeError, ImageRule, load_rgb, UnusableImageError
from data.loaders import BinaryImageDataset, make_eval_loader
from data.transforms import EvalTransform
from data.verification import verify
from networks import resnet50


def test_a_decompression_bomb_is_unreadable_not_a_traceback(tmp_path, monkeypatch):
    leaf = tmp_path / "suite" / "gen"
    for name in ("0_real", "1_fake"):
        os.makedirs(leaf / name)
        Image.new("RGB", (40, 40)).save(leaf / name / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40x40 is above twice this: Pillow raises
    report = verify(str(tmp_path), (), workers=1)
    gen = report["suites"][0]["generators"][0]
    assert len(gen["unreadable_files"]) == 2 and "2 unreadable" in gen["verdict"]


def test_an_image_above_the_decode_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    import data.images as images
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 32 * 32)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, _load=Image.Image.load: decoded.append(self.size) or
                        _load(self))
    skipped = []
    rule = ImageRule(report=lambda name, err: skipped.append(str(err)))
    assert rule.load(str(tmp_path / "big.png"), None)[2] == "too large"
    assert "too large: 40x40 pixels" in skipped[0] and (40, 40) not in decoded
    assert rule.load(str(tmp_path / "ok.png"), None)[2] is None


def png_bytes(arr, mode=None, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def make_corpus(folder):
    """name -> (bytes, status): "ok" decodes, "bad" cannot be decoded, "truncated" decodes only
    as far as it goes (scored by default, as the reference does)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    good_png, good_jpg = png_bytes(rgb), png_bytes(rgb, format="JPEG", quality=90)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    pal = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(pal, format="PNG", transparency=0)
    rgba = np.dstack([rgb, np.full((40, 30), 128, np.uint8)])
    i16 = io.BytesIO()
    Image.fromarray((rng.integers(0, 65536, (33, 31))).astype(np.uint16)).save(i16, format="PNG")
    corpus = {
        "empty.png": (b"", "bad"),
        "trunc.png": (good_png[: len(good_png) // 2], "truncated"),
        "trunc.jpg": (good_jpg[: len(good_jpg) // 2], "truncated"),
        "text.jpg": (b"this is not an image at all", "bad"),
        "cmyk.jpg": (cmyk.getvalue(), "ok"),
        "palette.png": (pal.getvalue(), "ok"),
        "rgba.png": (png_bytes(rgba), "ok"),
        "grey.png": (png_bytes(rgb[:, :, 0]), "ok"),
        "sixteen.png": (i16.getvalue(), "ok"),
        "one.png": (png_bytes(rgb[:1, :1]), "ok"),
        "odd.png": (png_bytes(rgb[:33, :27]), "ok"),
    }
    os.makedirs(folder, exist_ok=True)
    for name, (data, _) in corpus.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return corpus


def test_bad_image_corpus_decodes_or_raises_clearly(tmp_path):
    corpus = make_corpus(str(tmp_path))
    for name, (_, status) in corpus.items():
        path = str(tmp_path / name)
        if status == "bad":
            with pytest.raises(ImageDecodeError):
                load_rgb(path)
            continue
        img = load_rgb(path)
        assert img.mode == "RGB" and img.width >= 1 and img.info["truncated"] == (status == "truncated")
        if status == "truncated":
            with pytest.raises(ImageDecodeError, match="truncated"):
                load_rgb(path, allow_truncated=False)
    sixteen = np.asarray(load_rgb(str(tmp_path / "sixteen.png")))
    assert sixteen.std() > 20  # scaled to 8 bits, not clipped to white


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bytes(np.zeros((64, 64, 3), np.uint8)))
    with pytest.raises(ImageDecodeError):
        load_rgb(str(p))


def test_loader_skips_counts_and_strict_mode(tmp_path, caplog):
    corpus = make_corpus(str(tmp_path / "leaf" / "1_fake"))
    os.makedirs(tmp_path / "leaf" / "0_real")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "leaf" / "0_real" / "ok.png")
    samples = make_samples(str(tmp_path / "leaf"))
    n_bad = sum(1 for _, status in corpus.values() if status == "bad")
    n_trunc = sum(1 for _, status in corpus.values() if status == "truncated")
    # (transform, images too small for the model after it): without resize or crop, one.png stays 1x1.
    for transform, n_small in ((EvalTransform(32, 24, resize=True, crop=True), 0),
                               (EvalTransform(32, 24, resize=False, crop=False), 1),
                               (EvalTransform(32, 24, resize=False, crop=True), 0)):
        for skip_truncated in (False, True):
            batches = list(make_eval_loader(samples, transform, batch_size=4,
                                            rule=ImageRule(skip_truncated=skip_truncated)))
            scored = sum(len(b.labels) for b in batches)
            skipped = sum(len(b.skipped) for b in batches)
            truncated = sum(len(b.truncated) for b in batches)
            n_out = n_bad + n_small + (n_trunc if skip_truncated else 0)
            assert skipped == n_out and scored == len(samples) - n_out
            assert truncated == (0 if skip_truncated else n_trunc)
    assert "skipping image" in caplog.text and "too small for the model: 1x1" in caplog.text
    assert "is truncated" in caplog.text
    ds = BinaryImageDataset(samples, EvalTransform(32, 24), ImageRule(strict=True))
    with pytest.raises(UnusableImageError, match="--strict_images"):
        for i in range(len(ds)):
            ds[i]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=256),
    st.builds(lambda h, w, c, fmt: (h, w, c, fmt), st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3, 4]),
              st.sampled_from(["PNG", "JPEG", "BMP", "GIF"]))))
def test_loading_path_never_raises(tmp_path, payload):
    if isinstance(payload, tuple):
        h, w, c, fmt = payload
        arr = np.random.default_rng(h * 13 + w).integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)
        if fmt == "JPEG" and c == 4:
            arr = arr[:, :, :3]
        data = png_bytes(arr, format=fmt)
    else:
        data = payload
    path = tmp_path / "x.png"
    path.write_bytes(data)
    ds = BinaryImageDataset([(str(path), 1)], EvalTransform(16, 8, resize=False, crop=True))
    img, label, idx, _, why = ds[0]
    assert img is None or (img.shape == (3, 8, 8) and img.dtype == torch.uint8)
    assert (img is None) == (why in ("unreadable", "too small"))


@pytest.mark.slow
def test_strict_images_one_line_error_from_worker(tmp_path):
    import subprocess
    import sys

    from conftest import write_leaf
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    write_leaf(str(tmp_path / "suite" / "gen"), 3, 3)
    (tmp_path / "suite" / "gen" / "1_fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    torch.save(resnet50().state_dict(), str(tmp_path / "m.pth"))
    base = [sys.executable, os.path.join(root, "test.py"), "--dataroot", str(tmp_path), "--model_path",
            str(tmp_path / "m.pth"), "--gpu_ids", "-1", "--num_threads", "1", "--results_dir", str(tmp_path / "r")]
    r = subprocess.run(base + ["--strict_images"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "broken.png" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "skipping image" in r.stdout + r.stderr
    import json
    row = json.load(open(tmp_path / "r" / "results.json"))["results"][0]
    assert row["n_scored"] == 6 and row["n_skipped"] == 1
