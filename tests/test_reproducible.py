"""A run's model depends on its options and seed only, not on what else the process did."""
import os
import random

import numpy as np
import pytest
import torch

import train


@pytest.mark.slow
def test_building_npr_mini_in_the_same_process_does_not_change_the_model(tiny_dataset, tmp_path, monkeypatch):
    """A fresh clone builds NPR-mini and trains in one process; a later run only trains. Both
    must give the same model for the same seed (the build draws from the global RNG)."""
    import shutil

    def fake_build(root, rebuild=False):  # the real build trains generators: it reseeds and draws
        torch.manual_seed(0)
        torch.rand(1000)
        random.random()
        np.random.rand(10)
        if not os.path.isdir(root):
            shutil.copytree(tiny_dataset, root)

    monkeypatch.setattr(train, "build_mini", fake_build)
    monkeypatch.chdir(tmp_path)
    fixed = ["--gpu_ids", "-1", "--niter", "1", "--num_threads", "0", "--checkpoints_dir", str(tmp_path / "ck")]
    assert train.main(fixed + ["--name", "built"]) == 0  # no --dataroot: builds, then trains the mini recipe
    from options import MINI_RECIPE
    recipe = [f"--{k}={v}" for k, v in MINI_RECIPE.items() if k not in ("niter", "num_threads")]
    assert train.main(fixed + recipe + ["--name", "plain", "--dataroot", str(tmp_path / "datasets" / "npr-mini")]) == 0
    a, b = (torch.load(tmp_path / "ck" / n / "model_epoch_last.pth", weights_only=True)["model"] for n in ("built", "plain"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
