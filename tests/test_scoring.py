"""The one batched scoring path (predict.py, predict_proba, the demo) and predict.py's streaming,
resumable, sharded output."""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data.images import ImageRule
from data.transforms import EvalTransform, normalize_batch
from networks import EvalConfig, batch_probs, load_detector, predict_proba, prepare_model, resnet50, score_images
from conftest import ROOT, run_script


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Mixed sizes (odd ones too), a broken file, a too-small one and a truncated PNG, and a checkpoint."""
    tmp = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(0)
    imgs = tmp / "imgs"
    imgs.mkdir()
    sizes = [(32, 32), (33, 31), (32, 32), (40, 24), (33, 31), (32, 32)] * 4
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(imgs / f"{i:03d}.png")
    (imgs / "005.png").write_bytes(b"not an image")
    Image.fromarray(rng.integers(0, 256, (1, 9, 3), dtype=np.uint8)).save(imgs / "007.png")
    data = (imgs / "009.png").read_bytes()
    (imgs / "009.png").write_bytes(data[: len(data) * 2 // 3])
    torch.manual_seed(0)
    torch.save({"model": resnet50().state_dict(), "threshold": 0.5}, tmp / "m.pth")
    return tmp


def one_at_a_time(model, images, transform, rule):
    """The scoring path before batching: each image decoded and run alone, contiguous model."""
    out = []
    for im in images:
        pixels, _, why = rule.load(im, transform)
        out.append(float("nan") if pixels is None else torch.sigmoid(model(normalize_batch(pixels[None]))).item())
    return np.array(out)


@pytest.mark.parametrize("transform", [None, EvalTransform(40, 28, resize=True, crop=True)])
def test_batched_scores_equal_one_at_a_time(folder, transform):
    paths = sorted(str(p) for p in (folder / "imgs").iterdir())
    model = load_detector(str(folder / "m.pth"), device="cpu")
    rule = ImageRule(report=lambda name, err: None)
    with torch.inference_mode():
        expected = one_at_a_time(model, paths, transform, rule)
    prepared = prepare_model(model, torch.device("cpu"))
    for batch_size, window, workers in ((5, 7, 0), (64, 1024, 2)):
        cfg = EvalConfig(batch_size=batch_size, num_workers=workers, images=rule, channels_last=None)
        scores = list(score_images(prepared, paths, transform, cfg, window=window))
        assert [s.image for s in scores] == paths  # input order, whatever the buckets
        got = np.array([np.nan if s.prob is None else s.prob for s in scores])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        assert np.nanmax(np.abs(got - expected)) < 1e-6
        why = {os.path.basename(s.image): s.skipped for s in scores if s.skipped}
        assert why == ({"005.png": "unreadable", "007.png": "too small"} if transform is None else
                       {"005.png": "unreadable"})
        assert [os.path.basename(s.image) for s in scores if s.truncated] == ["009.png"]
    with pytest.warns(UserWarning) as caught:
        probs = predict_proba(model, paths + [Image.open(paths[1])], transform=transform, batch_size=3)
    named = sorted(name for w in caught for name in ("005.png", "007.png") if name in str(w.message))
    assert named == (["005.png", "007.png"] if transform is None else ["005.png"])
    assert np.nanmax(np.abs(probs.numpy() - np.append(expected, expected[1]))) < 1e-6


def test_batch_probs_splits_large_cpu_batches_without_changing_them():
    model = prepare_model(resnet50(), torch.device("cpu"))
    x = torch.randint(0, 256, (3, 3, 512, 384), dtype=torch.uint8)  # 8x256x256 pixels: one image per forward
    with torch.inference_mode():
        whole = torch.sigmoid(model(normalize_batch(x).contiguous(memory_format=torch.channels_last))).flatten()
    assert torch.allclose(batch_probs(model, x), whole, atol=1e-6, rtol=0)


def read(out):
    with open(out + ".csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out + ".jsonl") as f:
        lines = [json.loads(line) for line in f]
    return rows, lines, json.load(open(out + ".json"))


def assert_same_rows(a, b, context=""):
    """Rows of two runs: same paths, order, verdicts and flags; probabilities within 1e-6 (a batch
    of other images changes the last bits of a float32 forward)."""
    assert [r["path"] for r in a] == [r["path"] for r in b], context
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "prob_fake"} == {k: v for k, v in y.items() if k != "prob_fake"}
        px, py = (None if r["prob_fake"] in ("", None) else float(r["prob_fake"]) for r in (x, y))
        assert (px is None and py is None) or abs(px - py) < 1e-6, (context, x, y)


@pytest.mark.slow
def test_predict_streams_rows_and_summarises(folder, tmp_path):
    out = str(tmp_path / "p")
    r = run_script("predict.py", str(folder / "imgs"), "--model_path", str(folder / "m.pth"), "--output", out,
                   "--gpu_ids", "-1", "--batch_size", "4")
    assert r.returncode == 0, r.stderr
    rows, lines, meta = read(out)
    assert [row["path"] for row in rows] == [line["path"] for line in lines] == \
        sorted(str(p) for p in (folder / "imgs").iterdir())
    assert meta["complete"] and meta["predictions"] == lines and meta["counts"]["unreadable"] == 1
    assert "22 images scored (1 of them truncated), 2 skipped" in r.stdout
    assert r.stdout.count(".png") >= 24  # a small run lists its rows
    again = run_script("predict.py", str(folder / "imgs"), "--model_path", str(folder / "m.pth"), "--output", out,
                       "--gpu_ids", "-1")
    assert again.returncode == 0 and "24 of 24 images already scored" in again.stdout
    assert read(out) == (rows, lines, meta)


@pytest.mark.slow
def test_killed_scan_resumes_to_the_uninterrupted_result(folder, tmp_path):
    """A scan killed (SIGKILL) at a random moment, then the same command again, gives the
    uninterrupted run's files: no row lost, none twice."""
    imgs = tmp_path / "many"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(120):
        Image.fromarray(rng.integers(0, 256, (32, 32 + 2 * (i % 3), 3), dtype=np.uint8)).save(imgs / f"{i:03d}.png")
    common = [str(imgs), "--model_path", str(folder / "m.pth"), "--gpu_ids", "-1", "--batch_size", "2",
              "--num_threads", "0"]
    full = str(tmp_path / "full")
    assert run_script("predict.py", *common, "--output", full).returncode == 0
    seed = random.randrange(10**6)
    stop_after = random.Random(seed).randrange(2, 110)
    cut = str(tmp_path / "cut")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "predict.py"), *common, "--output", cut], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(cut + ".jsonl") and sum(1 for _ in open(cut + ".jsonl", "rb")) >= stop_after:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = sum(1 for _ in open(cut + ".jsonl", "rb"))
    assert 0 < n_before < 120, f"seed {seed}: the kill came too late to test anything"
    r = run_script("predict.py", *common, "--output", cut)
    assert r.returncode == 0, r.stderr
    assert "already scored" in r.stdout, seed
    a, b = read(full), read(cut)
    for i in range(2):
        assert_same_rows(a[i], b[i], f"seed {seed}")
    assert_same_rows(a[2]["predictions"], b[2]["predictions"], f"seed {seed}")
    assert a[2]["counts"] == b[2]["counts"] and b[2]["complete"]


@pytest.mark.slow
def test_shards_merge_into_the_single_process_output(folder, tmp_path):
    common = [str(folder / "imgs"), "--model_path", str(folder / "m.pth"), "--gpu_ids", "-1", "--batch_size", "4"]
    single = str(tmp_path / "single")
    assert run_script("predict.py", *common, "--output", single).returncode == 0
    sharded = str(tmp_path / "sharded")
    outs = [run_script("predict.py", *common, "--output", sharded, "--shard", f"{k}/3") for k in (2, 3, 1)]
    assert all(r.returncode == 0 for r in outs), [r.stderr for r in outs]
    assert "merged the 3 shards" in outs[-1].stdout and "merged the" not in outs[0].stdout
    a, b = read(single), read(sharded)
    for i in range(2):
        assert_same_rows(a[i], b[i])
    assert_same_rows(a[2]["predictions"], b[2]["predictions"])
    assert b[2]["counts"] == a[2]["counts"] and b[2]["settings"]["inputs"] == a[2]["settings"]["inputs"]
    assert run_script("predict.py", *common, "--output", sharded, "--shard", "4/3").returncode == 2


@pytest.mark.slow
def test_non_utf8_file_names_are_written_and_printed(folder, tmp_path):
    name = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9.png")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(name.decode("utf-8", "surrogateescape"), "PNG")
    out = str(tmp_path / "p")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), str(tmp_path), "--model_path",
                        str(folder / "m.pth"), "--output", out, "--gpu_ids", "-1"], cwd=ROOT, capture_output=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert b"caf\xef\xbf\xbd.png" in r.stdout  # shown with U+FFFD
    with open(out + ".csv", "rb") as f:
        assert name in f.read()  # the CSV keeps the file's bytes
    path = json.load(open(out + ".json"))["predictions"][0]["path"]
    assert os.fsencode(path) == name and os.path.exists(path)


SPELLINGS = ["imgs", "imgs/", "./imgs", "imgs//", "imgs/a.png", "./imgs/a.png", "imgs//b.png", "imgs/sub/../b.png",
             "imgs/*.png", "./imgs/[ab].png", "imgs/sub/c.png", "imgs/sub", "imgs/*", "imgs/**"]


@settings(deadline=None)
@given(inputs=st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=6))
def test_every_image_is_scored_once_however_the_inputs_spell_it(tmp_path_factory, inputs):
    import predict
    root = tmp_path_factory.getbasetemp() / "spellings"
    if not root.exists():
        for name in ("a.png", "b.png", "sub/c.png"):
            (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / "imgs" / name)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        paths = predict.expand_inputs(inputs)
    finally:
        os.chdir(cwd)
    canonical = [os.path.normpath(p) for p in paths]
    assert len(set(canonical)) == len(canonical)
    expected = set()
    for item in inputs:
        item = os.path.normpath(item)
        if item in ("imgs/*", "imgs/**"):  # a folder the pattern matches is searched (sub/c.png was left out)
            expected |= {"imgs/a.png", "imgs/b.png", "imgs/sub/c.png"}
        elif item in ("imgs", "imgs/sub"):
            expected |= {f for f in ("imgs/a.png", "imgs/b.png", "imgs/sub/c.png") if f.startswith(item + "/")}
        elif "*" in item or "[" in item:
            expected |= {"imgs/a.png", "imgs/b.png"}
        else:
            expected.add(item)
    assert set(canonical) == expected
