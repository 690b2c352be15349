import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data.perturb import parse_perturbations
from util import UserError
from conftest import ROOT, run_script


@pytest.fixture
def checkpoint(tmp_path):
    from networks import resnet50
    torch.manual_seed(0)
    path = str(tmp_path / "m.pth")
    torch.save({"model": resnet50().state_dict()}, path)
    return path


def test_perturbations_parse_and_change_pixels():
    ps = parse_perturbations("jpeg:95,50;blur:2;resize:0.5;jpeg:75+blur:1")
    assert [p.name for p in ps] == ["jpeg:95", "jpeg:50", "blur:2", "resize:0.5", "jpeg:75+blur:1"]
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    base = np.asarray(img).astype(float)
    diffs = {}
    for p in ps:
        out = p(img)
        assert out.size == img.size and out.mode == "RGB"
        diffs[p.name] = np.abs(np.asarray(out).astype(float) - base).mean()
        assert diffs[p.name] > 1
    assert diffs["jpeg:50"] > diffs["jpeg:95"]
    blurred = np.asarray(parse_perturbations("blur:2")[0](img)).astype(float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.5 * np.abs(np.diff(base, axis=1)).mean()
    for bad in ("jpeg:0", "blur:-1", "resize:2", "sharpen:1", "jpeg", "jpeg:75,50+blur:1"):
        with pytest.raises(UserError):
            parse_perturbations(bad)


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
def test_perturb_sweep_and_plots(tmp_path, checkpoint):
    from conftest import write_leaf
    for g in ("progan", "stylegan"):
        write_leaf(str(tmp_path / "data" / "ForenSynths" / g), 4, 4, seed=hash(g) % 100)
    res = str(tmp_path / "res")
    r = run_script("test.py", "--dataroot", str(tmp_path / "data"), "--model_path", checkpoint, "--results_dir", res,
            "--gpu_ids", "-1", "--num_threads", "0", "--perturb", "jpeg:90,50;blur:1;jpeg:75+blur:1", "--plots")
    assert r.returncode == 0, r.stderr
    assert "perturbation jpeg:50" in r.stdout and "perturbation jpeg:75+blur:1" in r.stdout
    results = json.load(open(os.path.join(res, "results.json")))["results"]
    perts = {row["perturbation"] for row in results}
    assert perts == {"none", "jpeg:90", "jpeg:50", "blur:1", "jpeg:75+blur:1"}
    assert len(results) == 5 * 3  # 2 generators + Mean per setting
    for f in ("ForenSynths_roc_pr.png", "ForenSynths_acc_ap.png", "ForenSynths_sweep.png"):
        assert Image.open(os.path.join(res, f)).size[0] > 500
    report = open(os.path.join(res, "results.md")).read()
    from report import sha256_of
    assert sha256_of(checkpoint) in report and "ForenSynths_sweep.png" in report and "## Options" in report


def test_hubconf_local(checkpoint):
    model = torch.hub.load(ROOT, "npr", source="local", checkpoint=checkpoint, device="cpu")
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1)
