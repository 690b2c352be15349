"""data/perturb.py: perturbations parse and change pixels; test.py's perturbation sweep and its plots."""
import json
import os

import numpy as np
import pytest
from conftest import run_script
from PIL import Image

from data.perturb import parse_perturbations
from util import UserError


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
