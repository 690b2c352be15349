"""The space of images a user can bring, drawn rather than listed: every size (the edges around
the tile grid forced in), every mode and bit depth Pillow opens, EXIF orientations, truncated
files, both artifact operators. Whatever the image, ``predict_proba`` returns one probability or
one named skip (NaN and a warning), and never raises.

The tile grid is scaled down here (16 px tiles above a 32 x 32 budget, with the same
remainder rule) so that sizes around every multiple of the grid cost milliseconds; the
paper-scale sizes (1025 x 1024, a 4097 x 3072 photo) run at full scale below and in
tests/test_detector.py."""
import io
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import networks.detector as detector
from data.images import SKIP_REASONS
from networks import predict_proba, prepare_model, resnet50

SMALL_TILE, SMALL_BUDGET = 16, 32 * 32
MODES = ("RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "La", "PA", "RGBa", "RGBX", "YCbCr", "LAB",
         "HSV")
# A format that stores each mode as it is (I -> TIFF: PNG would store it as I;16); the modes
# missing here exist only in memory (a PIL image handed to predict_proba).
FILE_FORMAT = {"RGB": "PNG", "L": "PNG", "LA": "PNG", "P": "PNG", "RGBA": "PNG", "CMYK": "JPEG", "I;16": "PNG",
               "I": "TIFF", "F": "TIFF", "1": "PNG", "YCbCr": "JPEG", "LAB": "TIFF"}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {op: prepare_model(resnet50(operator=op), torch.device("cpu")) for op in ("npr", "dwt")}


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(detector, "TILE", SMALL_TILE)
    monkeypatch.setattr(detector, "PIXEL_BUDGET", SMALL_BUDGET)


def sides(grid):
    """A side length: anything from 1 to a few grids, with the edges around each multiple of
    ``grid`` and of twice it (k * grid + {-1, 0, 1, 2, 7, 8, 9}) drawn often."""
    edges = st.builds(lambda k, d: max(1, k * grid + d), st.integers(1, 6), st.sampled_from([-1, 0, 1, 2, 7, 8, 9]))
    return st.one_of(st.integers(1, 5), st.integers(1, 6 * grid + 10), edges)


def image_of(mode, width, height, seed):
    """A random image of ``mode`` (values over the mode's whole range)."""
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        top = {"I;16": 65535, "I": 2**20, "F": 1.0}[mode]
        arr = rng.random((height, width)) * top
        return Image.fromarray(arr.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return rgb.convert(mode) if mode != "P" else rgb.quantize(16)


def as_file(img, tmp_path, name, orientation=None):
    fmt = "JPEG" if orientation is not None else FILE_FORMAT[img.mode]
    path = tmp_path / f"{name}.{fmt.lower()}"
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(path, fmt, **kwargs)
    return str(path)


def check_one(model, image, width, height):
    """predict_proba on one image: a probability when both sides hold a 2x2 block, else NaN and one
    warning naming why."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = predict_proba(model, [image])
    assert p.shape == (1,)
    if min(width, height) >= 2:
        assert math.isfinite(p[0]) and 0.0 <= p[0] <= 1.0, (width, height, p)
    else:
        assert math.isnan(p[0])
        assert any("too small" in str(w.message) for w in caught), [str(w.message) for w in caught]


@given(width=sides(SMALL_TILE), height=sides(SMALL_TILE), operator=st.sampled_from(["npr", "dwt"]),
       mode=st.sampled_from(MODES), as_path=st.booleans(), seed=st.integers(0, 2**16))
def test_every_size_and_mode_gets_a_probability_or_a_named_skip(models, small_tiles, tmp_path, width, height,
                                                                 operator, mode, as_path, seed):
    img = image_of(mode, width, height, seed)
    image = as_file(img, tmp_path, f"{width}x{height}") if as_path and mode in FILE_FORMAT else img
    check_one(models[operator], image, width, height)


@given(width=st.integers(1, 40), height=st.integers(1, 40), orientation=st.integers(1, 8),
       mode=st.sampled_from(["RGB", "L", "CMYK"]))
def test_exif_orientations_are_read_as_stored(models, tmp_path, width, height, orientation, mode):
    path = as_file(image_of(mode, width, height, 0), tmp_path, f"o{orientation}", orientation)
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == orientation and im.size == (width, height)
    check_one(models["npr"], path, width, height)  # the stored pixels, as the reference reads them


@given(cut=st.floats(0.0, 1.0), fmt=st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"]),
       width=sides(SMALL_TILE), height=st.integers(2, 60))
def test_a_file_cut_anywhere_is_scored_or_named_never_raises(models, small_tiles, tmp_path, cut, fmt, width,
                                                             height):
    buf = io.BytesIO()
    image_of("RGB", width, height, width * height).save(buf, fmt)
    data = buf.getvalue()[: int(len(buf.getvalue()) * cut)]
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = predict_proba(models["npr"], [str(path)])
    assert p.shape == (1,)
    if math.isnan(p[0]):
        assert any(str(path) in str(w.message) for w in caught)
    else:
        assert 0.0 <= p[0] <= 1.0


def test_a_truncated_file_that_decodes_to_nothing_is_unreadable(models, tmp_path):
    """A PNG cut right after its header claims a large image and decodes to one flat colour:
    refused (one named skip), not scored as a black image for minutes."""
    buf = io.BytesIO()
    image_of("RGB", 300, 200, 1).save(buf, "PNG")
    path = tmp_path / "header_only.png"
    path.write_bytes(buf.getvalue()[:120])
    with pytest.warns(UserWarning, match="truncated before any pixel data"):
        assert math.isnan(predict_proba(models["npr"], [str(path)])[0])
    cut = tmp_path / "half.png"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert math.isfinite(predict_proba(models["npr"], [str(cut)])[0])  # half of it decodes: scored, as the reference


@pytest.mark.slow  # megapixel photos at full scale
@pytest.mark.parametrize("size", [(1025, 1024), (1024, 1025), (1032, 1025), (2049, 513)])
def test_photos_one_pixel_past_the_tile_grid_are_scored(models, size):
    """At full scale: a last strip of 1 px joins the tile before it (the whole-image path drops an
    odd last column the same way)."""
    width, height = size
    for model in models.values():
        check_one(model, image_of("RGB", width, height, 0), width, height)


@pytest.mark.slow  # hundreds of tiles
def test_tiles_of_one_size_run_in_batches(models, small_tiles, monkeypatch):
    """A long thin image (a 89.5 Mpx header can claim 17,895,697 x 5) costs what its pixels cost:
    its many equal tiles share forward passes of about one whole tile's pixels, not one pass each."""
    model = models["npr"]
    calls = []
    features = type(model).features
    monkeypatch.setattr(type(model), "features", lambda self, x: calls.append(x.shape[0]) or features(self, x))
    width, height = 16 * 2000 + 3, 5  # 2000 tiles of 16 x 5, the last 19 wide
    p = predict_proba(model, [image_of("RGB", width, height, 0)])
    assert math.isfinite(p[0])
    # every pass but the last of each tile size carries over half a tile's pixels
    assert sum(calls) == 2000 and len(calls) <= 2 + 2 * width * height // (SMALL_TILE * SMALL_TILE)


def test_tiles_cover_the_image_and_keep_the_grid():
    for h, w in [(1025, 1024), (4097, 3072), (2, 524289), (513, 520), (1031, 1024)]:
        ts = detector.tiles(h, w)
        assert sum(th * tw for _, _, th, tw in ts) == h * w
        assert all(t % 8 == 0 and left % 8 == 0 for t, left, _, _ in ts)
        assert min(min(th, tw) for _, _, th, tw in ts) >= min(h, w, detector.MIN_TILE_SIDE)


def test_a_model_error_on_one_image_is_that_images_skip(models, monkeypatch, tmp_path):
    """The model failing on one image (memory, a shape an operator refuses) costs that image's
    score only: NaN with a warning naming it, the others scored as they would be alone."""
    model = models["npr"]
    paths = []
    for i, w in enumerate((32, 37, 32)):
        paths.append(str(tmp_path / f"{i}.png"))
        image_of("RGB", w, 32, i).save(paths[-1])
    alone = [predict_proba(model, [p])[0].item() for p in paths]
    forward = type(model).forward

    def failing(self, x):
        if x.shape[-1] == 37:
            raise RuntimeError("out of memory (simulated)")
        return forward(self, x)
    monkeypatch.setattr(type(model), "forward", failing)
    with pytest.warns(UserWarning, match="1.png .*model failed on it: out of memory"):
        p = predict_proba(model, paths)
    assert math.isnan(p[1]) and abs(p[0] - alone[0]) < 1e-6 and abs(p[2] - alone[2]) < 1e-6
    assert "model error" in SKIP_REASONS


def test_a_nan_output_is_that_images_skip_never_a_verdict(models, monkeypatch, tmp_path):
    """A NaN logit (float16 overflow on one image) would read as "real" at any threshold and
    write a row that is not JSON: it is that image's "model error" skip instead."""
    import predict
    model = models["npr"]
    for i, w in enumerate((32, 37, 32)):
        image_of("RGB", w, 32, i).save(tmp_path / f"{i}.png")
    forward = type(model).forward

    def nan_on_37(self, x):
        y = forward(self, x)
        return y * float("nan") if x.shape[-1] == 37 else y
    monkeypatch.setattr(type(model), "forward", nan_on_37)
    with pytest.warns(UserWarning, match="1.png .*model failed on it: its P\\(fake\\) is NaN"):
        p = predict_proba(model, sorted(str(f) for f in tmp_path.glob("*.png")))
    assert math.isnan(p[1]) and not math.isnan(p[0]) and not math.isnan(p[2])
    monkeypatch.setattr(predict, "load_for_evaluation", lambda *a, **k: (model, 0.5, "0" * 64))
    out = str(tmp_path / "out" / "p")
    assert predict.main([str(tmp_path), "--model_path", "unused.pth", "--gpu_ids", "-1", "--output", out]) == 0
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in a row")) for line in open(out + ".jsonl")]
    assert [r["verdict"] for r in rows][1] == "model error" and rows[1]["prob_fake"] is None


def test_a_file_replaced_between_its_header_read_and_its_decoding_is_scored(models, monkeypatch, tmp_path):
    """A scan reads headers to batch equal sizes, then decodes; a file replaced in between by one
    of another size is scored at its new size, not the end of the scan."""
    import data.loaders as loaders
    paths = []
    for i, w in enumerate((32, 32, 40, 32)):
        paths.append(str(tmp_path / f"{i}.png"))
        image_of("RGB", w, 32, i).save(paths[-1])
    alone = [predict_proba(models["npr"], [p])[0].item() for p in paths]
    monkeypatch.setattr(loaders, "image_size", lambda path: (32, 32))  # what the headers said before
    p = predict_proba(models["npr"], paths)
    assert all(abs(a - b) < 1e-6 for a, b in zip(p.tolist(), alone))


# Every format Pillow writes, with what can be odd about it: several frames, a file Pillow keeps
# open after load(), a format it identifies but cannot decode (PDF).
FORMATS = {"ico": {}, "im": {}, "bmp": {}, "tga": {}, "pcx": {}, "ppm": {}, "sgi": {}, "dds": {}, "webp": {},
           "jp2": {}, "tif": {"compression": "tiff_lzw"}, "pdf": {}, "xbm": {"mode": "1"},
           "gif": {"frames": 2}, "png": {"frames": 2}, "tiff": {"frames": 2}}


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_every_format_pillow_writes_is_scored_or_named_and_closed(models, tmp_path, ext):
    """Each file gets a probability or one named skip, and no file stays open: a scan of a
    million files must not run out of file handles."""
    opts = dict(FORMATS[ext])
    img = image_of(opts.pop("mode", "RGB"), 40, 32, 0)
    frames = opts.pop("frames", 1)
    path = tmp_path / f"a.{ext}"
    if frames > 1:
        img.save(path, save_all=True, append_images=[img.rotate(90)] * (frames - 1), **opts)
    else:
        img.save(path, **opts)
    fds = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = predict_proba(models["npr"], [str(path)] * 20)
        assert len(os.listdir("/proc/self/fd")) < fds + 5  # the scores (and the images) are still held here
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    if ext == "pdf":
        assert torch.isnan(p).all() and any("a.pdf" in str(w.message) for w in caught)
    else:
        assert torch.isfinite(p).all()


@given(h=st.integers(2, 40), w=st.integers(2, 40), channels=st.sampled_from([None, 1, 3, 4]),
       seed=st.integers(0, 2**16))
def test_a_numpy_image_scores_as_the_pil_image_of_its_pixels(models, h, w, channels, seed):
    """Notebooks hold images as arrays (scikit-image, imageio): one is scored as its PIL image."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w) if channels is None else (h, w, channels),
                                               dtype=np.uint8)
    pil = Image.fromarray(arr[..., 0] if channels == 1 else arr)
    for op, model in models.items():
        assert torch.equal(predict_proba(model, arr), predict_proba(model, pil)), op
        assert torch.equal(predict_proba(model, [arr, pil]), predict_proba(model, [pil, pil])), op
        if channels == 3:  # a view in reversed channel order (OpenCV's BGR made RGB) is no copy
            bgr = Image.fromarray(np.ascontiguousarray(arr[..., ::-1]))
            assert torch.equal(predict_proba(model, arr[..., ::-1]), predict_proba(model, bgr)), op


@pytest.mark.parametrize("bad", [
    None, 5, b"\x89PNG", ["a.png", None], np.zeros((4, 4, 3)), np.zeros((2, 4, 4, 3), np.uint8),
    np.zeros((4, 4, 2), np.uint8), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 3, 8, 8), torch.zeros(2, 3, 1, 8),
    torch.full((1, 3, 8, 8), 300), torch.zeros(1, 3, 8, 8, dtype=torch.bool), torch.zeros(1, 3, 8, 8, dtype=torch.cfloat),
], ids=lambda b: type(b).__name__ + str(tuple(getattr(b, "shape", ()))))
def test_what_predict_proba_cannot_take_is_one_error_that_says_what_it_takes(models, bad):
    with pytest.raises((TypeError, ValueError), match="predict_proba takes"):
        predict_proba(models["npr"], bad)


def test_an_empty_batch_is_an_empty_answer(models):
    assert predict_proba(models["npr"], []).shape == (0,)
    assert predict_proba(models["npr"], torch.zeros(0, 3, 8, 8)).shape == (0,)


@given(bad=st.lists(st.booleans(), min_size=1, max_size=4), value=st.sampled_from([float("nan"), float("inf")]))
def test_a_tensor_image_holding_nan_or_inf_gets_nan_and_a_warning(models, bad, value):
    x = torch.rand(len(bad), 3, 8, 8)
    for i, b in enumerate(bad):
        if b:
            x[i, 1, 2, 3] = value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = predict_proba(models["npr"], x)
    assert p.isnan().tolist() == bad  # an inf pixel gave a finite P(fake), read as a verdict
    assert len([w for w in caught if "holds NaN or inf" in str(w.message)]) == sum(bad)
    if any(bad):
        with pytest.raises(ValueError, match="holds NaN or inf"):
            predict_proba(models["npr"], x, strict=True)


def test_pillows_notes_on_metadata_do_not_reach_the_user(models, tmp_path):
    """A palette PNG with its transparency in bytes: Pillow warns once per image, from inside
    PIL and without the file's name; the pixels are the reference's convert('RGB') all the same."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).convert("P")
    img.save(tmp_path / "p.png", transparency=bytes(10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = predict_proba(models["npr"], [str(tmp_path / "p.png")])
    assert [str(w.message) for w in caught] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = predict_proba(models["npr"], [Image.open(tmp_path / "p.png").convert("RGB")])
    assert torch.equal(got, expected)


def whole_image_grey(img):
    """The 8-bit values of a 16- or 32-bit greyscale image, computed over the whole array at once
    (how data.images converted them before it worked in strips)."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


@given(mode=st.sampled_from(["I;16", "I", "F"]), width=st.integers(1, 40), height=st.integers(1, 40),
       top=st.sampled_from([1.0, 255.0, 256.0, 65535.0, 2.0**20]), strip=st.integers(1, 300), seed=st.integers(0, 99),
       special=st.sampled_from([None, float("nan"), float("inf"), -float("inf"), -5.0]))
def test_wide_greyscale_in_strips_equals_the_whole_array(monkeypatch, mode, width, height, top, strip, seed, special):
    import data.images as images
    arr = np.random.default_rng(seed).random((height, width)) * top
    if mode == "F" and special is not None:
        arr[0, 0] = special
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    img = Image.fromarray(np.clip(arr, 0, 65535 if mode == "I;16" else None).astype(dtype) if mode != "F"
                          else arr.astype(dtype))
    monkeypatch.setattr(images, "STRIP_PIXELS", strip)  # many strips, the last one short
    assert np.array_equal(images.grey_to_8bit(img), whole_image_grey(img))


DECODE_PEAK = """
import sys
sys.path.insert(0, {root!r})
from data.images import load_for_model

def status(key):  # kB
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size starts again from here (Linux)
before = status("VmRSS:")
x, _ = load_for_model(sys.argv[1], None)
assert tuple(x.shape) == (3, {side}, {side})
print((status("VmHWM:") - before) // 1024, status("VmHWM:") // 1024)
"""


@pytest.mark.slow
def test_every_bit_depth_at_the_decode_limit_decodes_in_the_8_bit_paths_memory(tmp_path):
    """A 16-bit grey PNG of 9459 x 9459 (a 170 KB file) peaked at 3.2 GB while it was scored, 32-bit
    integer and float TIFFs near 2.9 GB, where 8-bit files of that size stay near 1.2 GB. Every mode
    is measured in a process of its own: what decoding adds to the interpreter, and the peak in all.
    A 32-bit image adds only its own decoded pixels (4 bytes each) to the 8-bit path."""
    import subprocess
    import sys

    from conftest import ROOT
    from data.images import MAX_DECODE_PIXELS
    side = math.isqrt(MAX_DECODE_PIXELS)
    grew, peak = {}, {}
    for mode in ("RGB", "1", "I;16", "I", "F"):  # every bit depth (8-bit modes all convert as RGB's path does)
        path = str(tmp_path / f"{mode.replace(';', '_')}.{'png' if mode in ('RGB', '1', 'I;16') else 'tif'}")
        img = Image.new(mode, (side, side))
        img.save(path, **({} if path.endswith(".png") else {"compression": "tiff_deflate"}))
        del img
        r = subprocess.run([sys.executable, "-c", DECODE_PEAK.format(root=ROOT, side=side), path], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        grew[mode], peak[mode] = map(int, r.stdout.split())
    assert max(grew.values()) <= grew["RGB"] * 1.6, (grew, peak)  # I;16 grew 3.5 times as much
