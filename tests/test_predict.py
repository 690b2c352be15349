"""predict.py: its table, result files and figures, and what a user's folders bring (FIFOs by name or
in a folder)."""
import csv
import json
import os

import pytest
import torch
from conftest import hostile_leaf, run_script
from PIL import Image

from networks import resnet50


@pytest.mark.slow
def test_predict_table_files_and_visualisation(tmp_path, checkpoint):
    from conftest import write_leaf
    write_leaf(str(tmp_path / "imgs"), 2, 2, size=(33, 31))
    (tmp_path / "imgs" / "0_real" / "bad.png").write_bytes(b"nope")
    out = str(tmp_path / "pred")
    r = run_script("predict.py", str(tmp_path / "imgs" / "0_real"), str(tmp_path / "imgs" / "1_fake" / "*.png"),
            "--model_path", checkpoint, "--output", out, "--visualize", str(tmp_path / "vis"), "--gpu_ids", "-1")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out + ".csv")))
    assert len(rows) == 5 and set(rows[0]) == {"path", "prob_fake", "verdict", "truncated"}
    assert sum(r["verdict"] == "unreadable" for r in rows) == 1
    assert all(0 <= float(r["prob_fake"]) <= 1 for r in rows if r["prob_fake"])
    assert len(json.load(open(out + ".json"))["predictions"]) == 5
    figs = os.listdir(tmp_path / "vis")
    assert len(figs) == 4 and all(Image.open(tmp_path / "vis" / f).size[0] > 300 for f in figs)
    r = run_script("predict.py", str(tmp_path / "nothing_here_*.png"), "--model_path", checkpoint)
    assert r.returncode == 2 and "matches anything" in r.stderr


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
