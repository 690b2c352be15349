"""Whole scans at full scale: a folder holding photos one pixel past the 512 px tile grid
(1025 x 1024, 1024 x 1025, a 4097 x 3072 JPEG) among ordinary images is scored whole by
predict.py and test.py, within the memory bound docs/troubleshooting.md states for photos."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

from networks import resnet50

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
