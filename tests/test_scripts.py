"""The hostile-input corpus (tests/hostile.py) through every command-line script and the
notebook API: no traceback, exit code 0, every unusable file reported once and counted,
every usable file scored."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ON_CPU, ROOT, run_script, tiny_run, write_leaf

from networks import load_detector, predict_proba


pytestmark = pytest.mark.slow  # every test launches a script


@pytest.mark.parametrize("script", ["train.py", "test.py", "validate.py"])
def test_help(script):
    r = run_script(script, "--help")
    assert r.returncode == 0 and "--dataroot" in r.stdout and "default" in r.stdout
    # validate.py needs its folder; the others fall back to NPR-mini, and say so
    assert ("mini benchmark" in r.stdout.replace("\n", " ").replace("  ", " ")) == (script != "validate.py")


@pytest.mark.parametrize("args,needle", [
    (["train.py", "--no_such_flag"], "unrecognized arguments"),
    (["train.py", "--cropSize", "300", "--loadSize", "256", "--dataroot", "x"], "larger than --loadSize"),
    (["train.py", "--lr", "0", "--dataroot", "x"], "learning rate must be positive"),
    (["test.py", "--dataroot", "x"], "--model_path is required"),
])
def test_bad_options_one_line(args, needle):
    r = run_script(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_train_then_test_smoke(tiny_dataset, tmp_path):
    ck = str(tmp_path / "ck")
    r = run_script("train.py", *tiny_run(tiny_dataset, ck, "--name", "smoke", "--niter", "1", "--classes", "car,cat"))
    assert r.returncode == 0, r.stderr + r.stdout
    exp = os.path.join(ck, "smoke")
    for which in ("latest", "last", "0"):
        assert os.path.isfile(os.path.join(exp, f"model_epoch_{which}.pth"))
    assert os.path.isfile(os.path.join(exp, "log.log"))
    assert "(Val @ epoch 0)" in r.stdout and "ForenSynths test" in r.stdout
    state = torch.load(os.path.join(exp, "model_epoch_last.pth"), weights_only=True)
    assert {"model", "optimizer", "epoch", "total_steps", "lr", "opt", "rng"} <= set(state)
    assert state["epoch"] == 1 and state["total_steps"] == 6  # 24 images / batch 4

    # --dataroot holds suite folders: rename test/ into a ForenSynths suite plus a custom one.
    suites = tmp_path / "suites"
    os.makedirs(suites)
    os.rename(tiny_dataset / "test", suites / "CNN_synth_testset")
    res = str(tmp_path / "res")
    r = run_script("test.py", "--dataroot", str(suites), "--model_path", os.path.join(exp, "model_epoch_last.pth"),
            "--results_dir", res, "--gpu_ids", "-1", "--batch_size", "4", "--num_threads", "0")
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    assert "ForenSynths" in out and "ProGAN" in out and "StyleGAN" in out and "Mean" in out
    assert "99.8" in out  # the paper column for ProGAN
    assert "BigGAN" in out  # listed as missing, not a crash
    data = json.load(open(os.path.join(res, "results.json")))
    rows = {r["generator"]: r for r in data["results"]}
    assert rows["ProGAN"]["n_scored"] == 6 and rows["StyleGAN"]["n_scored"] == 4
    # ProGAN's numbers are the checkpoint's own predictions under ForenSynths' test transform (resize
    # to 256, no crop), scored here through the notebook interface: ACC at 0.5 and scikit-learn's AP
    from sklearn.metrics import average_precision_score

    from data.transforms import EvalTransform
    paths = sorted(str(p) for p in (suites / "CNN_synth_testset" / "progan").rglob("*.png"))
    labels = np.array([int("1_fake" in p) for p in paths])
    probs = predict_proba(load_detector(os.path.join(exp, "model_epoch_last.pth"), device="cpu"), paths,
                          EvalTransform(256, 224, resize=True, crop=False)).numpy()
    assert rows["ProGAN"]["acc"] == pytest.approx(100 * np.mean((probs > 0.5) == labels))
    assert rows["ProGAN"]["ap"] == pytest.approx(100 * average_precision_score(labels, probs), abs=1e-6)
    assert rows["ProGAN"]["r_acc"] == pytest.approx(100 * np.mean(probs[labels == 0] <= 0.5))
    assert rows["Mean"]["paper_acc"] == pytest.approx((99.8 + 96.3) / 2)  # paper mean over the same generators
    csv_lines = open(os.path.join(res, "results.csv")).read().splitlines()
    assert csv_lines[0].startswith("suite,generator,acc,ap") and len(csv_lines) == 4
    assert "| ProGAN |" in open(os.path.join(res, "results.md")).read()

    r = run_script("validate.py", "--dataroot", str(suites / "CNN_synth_testset" / "progan"),
            "--model_path", os.path.join(exp, "model_epoch_last.pth"), "--gpu_ids", "-1", "--no_resize", "--no_crop")
    assert r.returncode == 0 and "acc" in r.stdout and "6 images scored" in r.stdout

    r = run_script("test.py", "--dataroot", str(suites), "--model_path", os.path.join(exp, "model_epoch_last.pth"),
            "--suites", "NoSuchSuite", "--gpu_ids", "-1")
    assert r.returncode == 2 and "unknown suite" in r.stderr


def test_continue_train_resumes(tiny_dataset, tmp_path):
    ck = str(tmp_path / "ck")
    common = tiny_run(tiny_dataset, ck, "--name", "res", "--niter", "2")
    r = run_script("train.py", *common[:-1], "1")
    assert r.returncode == 0, r.stderr
    r = run_script("train.py", *common, "--continue_train")
    assert r.returncode == 0, r.stderr
    assert "Resuming from" in r.stdout and "(Val @ epoch 1)" in r.stdout and "(Val @ epoch 0)" not in r.stdout
    state = torch.load(os.path.join(ck, "res", "model_epoch_last.pth"), weights_only=True)
    assert state["epoch"] == 2 and state["total_steps"] == 12


N_REAL = 3


def names(status, *kinds):
    return [n for n, s in status.items() if s in kinds]


def run(*args):
    """``run_script``, which must exit 0 without a traceback; its output."""
    r = run_script(*args)
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode == 0, out
    return out


def assert_reported_once(out, bad_names):
    warned = [line for line in out.splitlines() if "skipping image" in line]
    for name in bad_names:
        assert sum(name in line for line in warned) == 1, (name, warned)
    assert len(warned) == len(bad_names), warned


@pytest.mark.slow
def test_test_py_scores_every_usable_file_and_counts_the_rest(corpus):
    tmp, status = corpus
    out = run("test.py", "--dataroot", str(tmp / "suites"), "--model_path", str(tmp / "m.pth"), "--gpu_ids", "-1",
              "--num_threads", "0", "--batch_size", "4", "--results_dir", str(tmp / "res"))
    unusable = names(status, "bad", "small")  # a custom suite keeps the pixels: 1-px sides stay 1 px
    assert_reported_once(out, unusable)
    assert "not found" not in out  # no benchmark suite was asked for: none is listed as missing
    row = json.load(open(tmp / "res" / "results.json"))["results"][0]
    assert row["n_scored"] == N_REAL + len(names(status, "ok", "truncated"))
    assert row["n_skipped"] == len(unusable) and row["n_truncated"] == 1
    assert row["n_images"] == N_REAL + len(status)  # the folder named like an image is not a file


@pytest.mark.slow
def test_test_py_mentions_only_suites_asked_for(corpus):
    tmp, _ = corpus
    out = run("test.py", "--dataroot", str(tmp / "suites"), "--model_path", str(tmp / "m.pth"), "--gpu_ids", "-1",
              "--num_threads", "0", "--suites", "hostile,GenImage", "--results_dir", str(tmp / "res2"))
    assert "Suites not found" in out and "GenImage" in out and "ForenSynths" not in out


@pytest.mark.slow
def test_strict_images_is_one_line(corpus):
    tmp, _ = corpus
    r = subprocess.run([sys.executable, "test.py", "--dataroot", str(tmp / "suites"), "--model_path",
                        str(tmp / "m.pth"), "--gpu_ids", "-1", "--num_threads", "0", "--strict_images",
                        "--results_dir", str(tmp / "res3")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--strict_images" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("resize", [False, True])
def test_validate_py(corpus, resize):
    tmp, status = corpus
    args = [] if resize else ["--no_resize", "--no_crop"]
    out = run("validate.py", "--dataroot", str(tmp / "suites" / "hostile" / "gen"), "--model_path",
              str(tmp / "m.pth"), *ON_CPU, "--loadSize", "32", "--cropSize", "24", *args)
    # Resized to 32 px, a 1-px side is large enough; kept as it is, it is not.
    unusable = names(status, "bad") if resize else names(status, "bad", "small")
    assert_reported_once(out, unusable)
    scored = N_REAL + len(status) - len(unusable)
    assert f"{scored} images scored (1 of them truncated), {len(unusable)} skipped" in out


@pytest.mark.slow
def test_predict_py_with_figures(corpus):
    tmp, status = corpus
    figures = tmp / "figures"
    out = run("predict.py", str(tmp / "suites" / "hostile" / "gen" / "1_fake"), "--model_path", str(tmp / "m.pth"),
              "--gpu_ids", "-1", "--output", str(tmp / "pred"), "--visualize", str(figures))
    unusable = names(status, "bad", "small")
    assert_reported_once(out, unusable)
    usable = len(status) - len(unusable)
    assert f"{usable} images scored (1 of them truncated), {len(unusable)} skipped" in out
    rows = json.load(open(str(tmp / "pred") + ".json"))["predictions"]
    verdicts = {os.path.basename(r["path"]): r["verdict"] for r in rows}
    assert {n for n, v in verdicts.items() if v == "too small"} == set(names(status, "small"))
    # the bomb's header claims 30000x30000 pixels: refused before decoding, as too large
    assert {n for n, v in verdicts.items() if v == "unreadable"} == set(names(status, "bad")) - {"bomb.png"}
    assert verdicts["bomb.png"] == "too large"
    assert len(os.listdir(figures)) == usable


@pytest.mark.slow
def test_train_py_trains_on_every_usable_file(corpus, tmp_path):
    tmp, status = corpus
    root = tmp_path / "data"
    shutil.copytree(tmp / "suites" / "hostile" / "gen", root / "train" / "cat", symlinks=True)
    write_leaf(str(root / "val" / "cat"), 2, 2, size=(20, 20))
    out = run("train.py", *tiny_run(root, tmp_path / "ck", "--name", "hostile", "--niter", "1"))
    unusable = names(status, "bad")  # resized to 32 px first: no image is too small
    assert_reported_once(out, unusable)
    assert f"Images skipped in epoch 0 (named in the warnings above): {len(unusable)} in training" in out
    state = torch.load(tmp_path / "ck" / "hostile" / "model_epoch_last.pth", weights_only=True)
    assert state["total_steps"] == -(-(N_REAL + len(status)) // 4)
