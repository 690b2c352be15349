"""networks/detector.py: scoring photos of any size (tiles above the pixel budget, whole scans at full
scale), predict_proba's inputs, and the fused channels-last model equal to the plain forward."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import calibrate, names, randomized_model, run_script
from PIL import Image

from networks import batch_probs, load_detector, predict_proba, prepare_model, resnet50
from networks.detector import PIXEL_BUDGET, TILE, tiles
from networks.fuse import fuse_for_inference


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


def test_predict_proba_given_a_fifo_by_path_does_not_hang(tmp_path):
    from networks import predict_proba
    os.mkfifo(tmp_path / "pipe.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match="not a regular file"):
        probs = predict_proba(resnet50().eval(), [str(tmp_path / "pipe.png"), str(tmp_path / "ok.png")])
    assert torch.isnan(probs[0]) and not torch.isnan(probs[1])


def test_notebook_api(corpus):
    tmp, status = corpus
    folder = tmp / "suites" / "hostile" / "gen" / "1_fake"
    model = load_detector(str(tmp / "m.pth"), device="cpu")
    paths = [str(folder / n) for n in status]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = predict_proba(model, paths)
    assert probs.shape == (len(paths),)
    for name, p in zip(status, probs.tolist()):
        assert (p != p) == (status[name] in ("bad", "small")), name  # NaN exactly for the unusable ones
    ours = [str(w.message) for w in caught if "predict_proba" in str(w.message)]
    assert len(ours) == len(names(status, "bad", "small"))
    with pytest.raises(ValueError, match="cannot use image"):
        predict_proba(model, paths, strict=True)


# docs/troubleshooting.md: predict.py stays under this for any photo up to 48 Mpx on the CPU.
PHOTO_PEAK_MIB = 1280


ODD = {"1025x1024.png": (1025, 1024), "1024x1025.png": (1024, 1025), "4097x3072.jpg": (4097, 3072)}


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scans")
    leaf = tmp / "data" / "phone" / "camera"
    rng = np.random.default_rng(0)
    for label in ("0_real", "1_fake"):
        (leaf / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(leaf / label / f"{i}.png")
    for name, (w, h) in ODD.items():
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        img.save(leaf / "0_real" / name, quality=92) if name.endswith(".jpg") else img.save(leaf / "0_real" / name)
    torch.manual_seed(0)
    ckpt = str(tmp / "m.pth")
    torch.save({"model": resnet50().state_dict()}, ckpt)
    return tmp, leaf, ckpt


def peak_rss_of(cmd):
    """(completed process, peak RSS in MiB) of ``cmd`` run from a small parent of its own: a
    child's ru_maxrss starts from the RSS of the process it was forked from."""
    probe = ("import resource, subprocess, sys, json; r = subprocess.run(json.loads(sys.argv[1]), capture_output=True, "
             "text=True); print(json.dumps([r.returncode, r.stdout, r.stderr, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    out = run_script("-c", probe, json.dumps(cmd), timeout=900)
    code, stdout, stderr, peak = json.loads(out.stdout)
    return subprocess.CompletedProcess(cmd, code, stdout, stderr), peak


@pytest.mark.slow
def test_predict_py_scores_the_folder_whole_within_the_photo_memory_bound(scan_folder):
    tmp, leaf, ckpt = scan_folder
    out = str(tmp / "pred" / "p")
    r, peak = peak_rss_of([sys.executable, "predict.py", str(leaf), "--model_path", ckpt, "--gpu_ids", "-1",
                           "--output", out])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    rows = [json.loads(line) for line in open(out + ".jsonl")]
    assert len(rows) == 9 and all(row["verdict"] in ("real", "fake") for row in rows), rows
    assert {os.path.basename(row["path"]) for row in rows} >= set(ODD)
    assert peak < PHOTO_PEAK_MIB, f"predict.py peaked at {peak:.0f} MiB"


@pytest.mark.slow
def test_test_py_scores_the_folder_whole(scan_folder):
    tmp, _, ckpt = scan_folder
    r = run_script("test.py", "--dataroot", str(tmp / "data"), "--model_path", ckpt,
                   "--gpu_ids", "-1", "--results_dir", str(tmp / "results"), timeout=900)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    row = next(r for r in json.load(open(tmp / "results" / "results.json"))["results"] if r["generator"] == "camera")
    assert row["n_scored"] == 9 and row["n_skipped"] == 0


@pytest.mark.parametrize("shape", [(4, 3, 40, 40), (2, 3, 33, 47), (1, 3, 64, 48)])
def test_fused_channels_last_model_matches_plain_forward(shape):
    x = torch.randn(*shape) * 2
    model = calibrate(randomized_model(), x)
    with torch.no_grad():
        plain = torch.sigmoid(model(x))
    fast = prepare_model(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.inference_mode():
        out = torch.sigmoid(fast(x.contiguous(memory_format=torch.channels_last)))
    assert 0.01 < plain.min() and plain.max() < 0.99
    assert (out - plain).abs().max().item() <= 1e-4


def test_fuse_refuses_other_models():
    with pytest.raises(TypeError, match="NPRResNet"):
        fuse_for_inference(torch.nn.Linear(2, 2))


def _model_with_statistics():
    torch.manual_seed(0)
    m = resnet50(num_classes=1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("size", [40, pytest.param(1100, marks=pytest.mark.slow)])  # whole, and in tiles (> 1 Mpx)
def test_scoring_a_model_that_is_training_uses_and_keeps_its_running_statistics(size):
    """A notebook scores between epochs: the scores are the eval-mode ones, BatchNorm's running
    statistics do not move, and each submodule keeps its mode."""
    from networks import predict_proba
    m = _model_with_statistics()
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    expected = predict_proba(m.eval(), x)
    m.train()
    m.layer1.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert torch.equal(predict_proba(m, x), expected)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.training and not m.layer1.training and m.layer2.training


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_model_in_another_precision_scores_images(dtype):
    from networks import predict_proba
    m = _model_with_statistics().eval()
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    expected = predict_proba(m, x)
    got = predict_proba(m.to(dtype), x)  # raised "Input type (torch.FloatTensor) and weight type ... should be the same"
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=0.05)
