"""What a user's own folders and photos bring: FIFOs, links to devices, unreadable folders,
decompression bombs, images above the pixel budget and above the decode limit."""
import os

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

from data.discovery import list_images, scan_images
from data.images import ImageRule
from networks import batch_probs, prepare_model, resnet50
from networks.detector import PIXEL_BUDGET, TILE, tiles
from data.verification import verify


def hostile_leaf(root):
    """A 0_real / 1_fake leaf holding, besides real PNGs, a FIFO and a link to /dev/zero named
    like images."""
    rng = np.random.default_rng(0)
    for name in ("0_real", "1_fake"):
        os.makedirs(root / name)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    os.mkfifo(root / "1_fake" / "fifo.png")
    os.symlink("/dev/zero", root / "0_real" / "zero.png")
    return root


def test_fifo_and_device_links_are_named_never_opened(tmp_path):
    leaf = hostile_leaf(tmp_path / "suite" / "gen")
    scan = scan_images(str(leaf))
    assert len(scan.images) == 4
    kinds = {os.path.basename(p): k for p, k in scan.not_regular}
    assert kinds == {"fifo.png": "a FIFO", "zero.png": "a character device behind a link"}
    assert "2 image name(s) that are not regular files" in scan.skipped_line(str(leaf))
    # verify() must not hang on the FIFO nor read /dev/zero without end
    report = verify(str(tmp_path), (), workers=1)
    gen = report["suites"][0]["generators"][0]
    assert {os.path.basename(e["path"]) for e in gen["not_regular_files"]} == {"fifo.png", "zero.png"}
    assert "2 not regular files" in gen["verdict"]


@pytest.mark.slow
def test_predict_py_skips_a_fifo_given_by_name_or_in_a_folder(tmp_path):
    leaf = hostile_leaf(tmp_path)
    ckpt = str(tmp_path / "m.pth")
    torch.save({"model": resnet50().state_dict()}, ckpt)
    r = run_script("predict.py", str(leaf), str(leaf / "1_fake" / "fifo.png"), "--model_path",
                   ckpt, "--gpu_ids", "-1", "--output", str(tmp_path / "p"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "not regular files" in r.stdout and "fifo.png (a FIFO)" in r.stdout
    assert "4 images scored" in r.stdout


def test_an_unreadable_folder_is_reported(tmp_path, monkeypatch, caplog):
    (tmp_path / "ok").mkdir()
    (tmp_path / "locked").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ok" / "a.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":  # what a folder without read permission raises
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="npr"):
        assert list_images(str(tmp_path)) == [str(tmp_path / "ok" / "a.png")]
    assert "1 folder(s) that could not be read" in caplog.text and "Permission denied" in caplog.text


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


def test_tiles_cover_the_image_on_the_2x2_grid():
    for h, w in ((1025, 2048), (6000, 8000), (513, 3)):
        ts = tiles(h, w)
        assert sum(th * tw for _, _, th, tw in ts) == h * w
        assert all(top % 8 == 0 and left % 8 == 0 for top, left, _, _ in ts)  # so also on NPR's 2x2 grid
    assert TILE % 8 == 0


@pytest.mark.slow
def test_above_the_budget_the_tile_verdict_stays_near_the_whole_image():
    """A 1040 x 1040 image (just above the 1 Mpx budget) scored in tiles against the same image
    scored whole (the model's own forward): the pooled features differ only at tile borders."""
    torch.manual_seed(0)
    model = prepare_model(resnet50(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (3, 130, 130), dtype=np.uint8)
    x = torch.from_numpy(np.kron(small, np.ones((1, 8, 8), np.uint8)))[None]  # smooth content, 1040 px
    assert x.shape[-1] * x.shape[-2] > PIXEL_BUDGET
    tiled = batch_probs(model, x)
    with torch.inference_mode():
        from data.transforms import normalize_batch
        whole = torch.sigmoid(model(normalize_batch(x).contiguous(memory_format=torch.channels_last))).flatten()
    assert abs(tiled.item() - whole.item()) < 0.02, (tiled.item(), whole.item())
    under = x[..., :1024, :1024]
    with torch.inference_mode():
        direct = torch.sigmoid(model(normalize_batch(under).contiguous(memory_format=torch.channels_last))).flatten()
    assert torch.allclose(batch_probs(model, under), direct, atol=1e-6, rtol=0)  # under the budget: unchanged


@pytest.mark.slow
@pytest.mark.parametrize("size", [(2000, 1100)])
def test_a_photo_above_the_budget_gets_a_verdict_through_predict_py(tmp_path, size):
    w, h = size
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "p.jpg")
    ckpt = str(tmp_path / "m.pth")
    torch.save({"model": resnet50().state_dict()}, ckpt)
    r = run_script("predict.py", str(tmp_path / "p.jpg"), "--model_path", ckpt, "--gpu_ids", "-1",
                   "--output", str(tmp_path / "o"), "--visualize", str(tmp_path / "fig"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 images scored" in r.stdout
    fig = os.listdir(tmp_path / "fig")
    assert len(fig) == 1


def test_the_verifier_hashes_in_chunks(tmp_path, monkeypatch):
    """A large non-image is hashed 1 MiB at a time, not read whole into memory."""
    import hashlib

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


def test_predict_proba_given_a_fifo_by_path_does_not_hang(tmp_path):
    from networks import predict_proba
    os.mkfifo(tmp_path / "pipe.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match="not a regular file"):
        probs = predict_proba(resnet50().eval(), [str(tmp_path / "pipe.png"), str(tmp_path / "ok.png")])
    assert torch.isnan(probs[0]) and not torch.isnan(probs[1])
