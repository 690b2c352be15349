"""The reference's defaults where they change the model or the numbers, the GenImage recipe,
and results over several checkpoints."""
import json
import random

import numpy as np
import pytest
import torch
from conftest import run_script, write_leaf
from PIL import Image

from data.transforms import train_transform
from data.augment import gaussian_blur, reference_blur
from metrics import mean_row, summarize_checkpoints
from options import parse_train_args
from devices import set_numerics


def cnndetection_blur(img, sigma):
    """Transcription of CNNDetection's / the reference's ``data/datasets.py`` ``gaussian_blur``
    as ``data_augment`` calls it: on ``np.array(img)``, in place, channel by channel."""
    from scipy.ndimage import gaussian_filter
    img = np.array(img)
    gaussian_filter(img[:, :, 0], output=img[:, :, 0], sigma=sigma)
    gaussian_filter(img[:, :, 1], output=img[:, :, 1], sigma=sigma)
    gaussian_filter(img[:, :, 2], output=img[:, :, 2], sigma=sigma)
    return img


@pytest.mark.parametrize("sigma", [0.5, 1.3, 3.0])
def test_blur_augmentation_is_the_reference_blur(sigma):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    ours = np.asarray(reference_blur(img, sigma))
    assert np.array_equal(ours, cnndetection_blur(img, sigma))
    # A rounded float blur is a different image: the in-place uint8 passes truncate.
    assert not np.array_equal(ours, np.asarray(gaussian_blur(img, sigma)))


def test_blur_augmentation_is_used_in_training():
    opt = parse_train_args(["--loadSize", "40", "--cropSize", "40", "--blur_prob", "1",
                            "--blur_sig", "1.3", "--no_flip"])
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = train_transform(opt)(img, random.Random(0))
    assert np.array_equal(out.permute(1, 2, 0).numpy(), cnndetection_blur(img, 1.3))


def test_defaults_that_change_the_model():
    opt = parse_train_args([])
    assert opt.earlystop_epoch == 0  # the reference never stops early: it trains all --niter epochs
    assert not opt.train_channels_last and not opt.tf32 and not opt.amp and not opt.no_resize


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="PyTorch < 2.9 spells TF32 allow_tf32")
def test_tf32_off_unless_asked():
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    try:
        set_numerics()
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        set_numerics(tf32=True)
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


def test_genimage_mean_leaves_out_the_training_generator():
    rows = [{"generator": g, "acc": a, "ap": 90.0, "r_acc": 1.0, "f_acc": 1.0, "auc": 1.0, "best_acc": 1.0,
             "paper_acc": None, "paper_ap": None, "n_scored": 10, "n_skipped": 0, "n_truncated": 0,
             "in_mean": g != "SDv1.4"} for g, a in (("ADM", 80.0), ("SDv1.4", 100.0), ("VQDM", 90.0))]
    m = mean_row(rows, "GenImage")
    assert m["acc"] == pytest.approx(85.0) and m["n_scored"] == 30  # shown and counted, not averaged


def test_genimage_suite_marks_sdv14():
    from data.benchmarks import suite_by_name
    gens = {g.name: g for g in suite_by_name("GenImage").generators}
    assert not gens["SDv1.4"].in_mean and sum(g.in_mean for g in gens.values()) == 7


def test_no_resize_training_keeps_pixels_and_tiles_small_images():
    opt = parse_train_args(["--no_resize", "--cropSize", "24", "--loadSize", "24", "--no_flip"])
    t = train_transform(opt)
    big = np.random.default_rng(3).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    out = t(Image.fromarray(big), random.Random(5)).permute(1, 2, 0).numpy()
    rng = random.Random(5)
    top, left = rng.randint(0, 50 - 24), rng.randint(0, 40 - 24)
    assert np.array_equal(out, big[top:top + 24, left:left + 24])  # a window of the original pixels
    small = np.random.default_rng(4).integers(0, 256, (10, 7, 3), dtype=np.uint8)
    out = t(Image.fromarray(small), random.Random(6)).permute(1, 2, 0).numpy()
    tiled = np.tile(small, (3, 4, 1))
    assert out.shape == (24, 24, 3)
    assert any(np.array_equal(out, tiled[y:y + 24, x:x + 24]) for y in range(7) for x in range(5))


@pytest.mark.slow
def test_genimage_recipe_trains_on_mixed_sizes(tmp_path):
    """The authors' GenImage recipe: no resize, small images tiled, random crop (sizes mixed)."""
    root = tmp_path / "sdv14"
    write_leaf(str(root / "train"), 4, 4, size=(40, 36), seed=1)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(20, 18), (33, 47), (64, 30)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / "0_real" / f"m{i}.png")
    write_leaf(str(root / "val"), 2, 2, size=(30, 30), seed=2)
    r = run_script("train.py", "--dataroot", str(root), "--name", "gi",
                   "--checkpoints_dir", str(tmp_path / "ck"), "--no_resize", "--cropSize", "24", "--loadSize", "24",
                   "--seed", "70", "--niter", "1", "--batch_size", "4", "--gpu_ids", "-1", "--num_threads", "0", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    state = torch.load(tmp_path / "ck" / "gi" / "model_epoch_last.pth", weights_only=True)
    assert state["total_steps"] == 3 and state["opt"]["no_resize"] and state["opt"]["seed"] == 70  # 11 images


def test_summary_is_mean_and_sample_sd_across_checkpoints():
    rows = []
    for path, accs in (("a", (90.0, 70.0)), ("b", (80.0, 60.0)), ("c", (85.0, 62.0))):
        for gen, acc in zip(("X", "Y"), accs):
            rows.append({"suite": "S", "generator": gen, "perturbation": "none", "model_path": path, "acc": acc,
                         "ap": 99.0, "r_acc": None, "f_acc": 50.0, "auc": 1.0, "best_acc": 1.0, "paper_acc": 95.0})
    s = {r["generator"]: r for r in summarize_checkpoints(rows)}
    assert s["X"]["acc_mean"] == pytest.approx(85.0) and s["X"]["acc_sd"] == pytest.approx(5.0)
    assert s["Y"]["acc_sd"] == pytest.approx(np.std([70, 60, 62], ddof=1))
    assert s["X"]["ap_sd"] == 0.0 and s["X"]["r_acc_mean"] is None and s["X"]["n_checkpoints"] == 3
    assert s["X"]["paper_acc"] == 95.0


@pytest.mark.slow
def test_test_py_reports_mean_and_sd_over_checkpoints(tmp_path):
    write_leaf(str(tmp_path / "data" / "suite" / "gen_a"), 3, 3, seed=1)
    write_leaf(str(tmp_path / "data" / "suite" / "gen_b"), 3, 3, seed=2)
    paths = []
    for seed in (100, 101, 102):
        torch.manual_seed(seed)
        from networks import resnet50
        paths.append(str(tmp_path / f"seed{seed}.pth"))
        torch.save(resnet50().state_dict(), paths[-1])
    res = tmp_path / "res"
    r = run_script("test.py", "--dataroot", str(tmp_path / "data"),
                   "--model_path", *paths, "--results_dir", str(res), "--gpu_ids", "-1", "--num_threads", "0", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mean ± sd over 3 checkpoints" in r.stdout and "±" in r.stdout.split("mean ± sd over 3")[1]
    data = json.load(open(res / "results.json"))
    assert len(data["results"]) == 3 * 3  # 2 generators + Mean, per checkpoint
    assert {row["model_path"] for row in data["results"]} == set(paths)
    summary = {row["generator"]: row for row in data["summary"]}
    accs = [row["acc"] for row in data["results"] if row["generator"] == "gen_a"]
    assert summary["gen_a"]["acc_mean"] == pytest.approx(np.mean(accs))
    assert summary["gen_a"]["acc_sd"] == pytest.approx(np.std(accs, ddof=1))
    lines = open(res / "summary.csv").read().splitlines()
    assert lines[0].startswith("suite,generator,perturbation,n_checkpoints,acc_mean,acc_sd") and len(lines) == 4
    report = open(res / "results.md").read()
    assert "Mean ± standard deviation over 3 checkpoints" in report and report.count("SHA-256") == 3
