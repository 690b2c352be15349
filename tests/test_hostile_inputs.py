"""The hostile-input corpus (tests/hostile.py) through every command-line script and the
notebook API: no traceback, exit code 0, every unusable file reported once and counted,
every usable file scored."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import ROOT, run_script, write_leaf
from hostile import write_hostile_corpus

from networks import load_detector, predict_proba, resnet50

N_REAL = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tmp, status): <tmp>/suites/hostile/gen/{0_real: 3 good PNGs, 1_fake: the corpus}, a checkpoint m.pth."""
    tmp = tmp_path_factory.mktemp("hostile")
    gen = tmp / "suites" / "hostile" / "gen"
    write_leaf(str(gen), N_REAL, 0, size=(20, 20))
    status = write_hostile_corpus(str(gen / "1_fake"))
    torch.manual_seed(0)
    torch.save(resnet50().state_dict(), str(tmp / "m.pth"))
    return tmp, status


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
              str(tmp / "m.pth"), "--gpu_ids", "-1", "--num_threads", "0", "--loadSize", "32", "--cropSize", "24",
              *args)
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
    out = run("train.py", "--dataroot", str(root), "--name", "hostile", "--checkpoints_dir", str(tmp_path / "ck"),
              "--niter", "1", "--batch_size", "4", "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1",
              "--num_threads", "0")
    unusable = names(status, "bad")  # resized to 32 px first: no image is too small
    assert_reported_once(out, unusable)
    assert f"Images skipped in epoch 0 (named in the warnings above): {len(unusable)} in training" in out
    state = torch.load(tmp_path / "ck" / "hostile" / "model_epoch_last.pth", weights_only=True)
    assert state["total_steps"] == -(-(N_REAL + len(status)) // 4)


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
