"""SAFE's artifact operator and recipe against SAFE's own code (Li et al., KDD 2025;
Ouxiang-Li/SAFE: ``models/resnet.py``, ``optim_factory.py``, ``utils.py``, ``main_finetune.py``).

SAFE's network is transcribed below with the package it uses, ``pytorch_wavelets``, and
torchvision's ``Resize``: the same weights must give the same probabilities through
``networks.resnet50(operator="dwt")``, whose operator is computed with ``ptwt`` instead. Its
optimiser groups, learning-rate schedule and label-smoothed loss are transcribed too, and a few
training steps of both must agree.
"""
import argparse
import json
import math
import os
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from conftest import run_script, tiny_run
from test_train_parity import RefResNet

import hubconf
import recipe
from data.transforms import normalize_batch
from networks import load_detector, predict_proba, resnet50, wavelet_hh

# pytorch_wavelets 1.3.0 imports pkg_resources for its dual-tree tables, which setuptools >= 82
# no longer ships; its DWT does not use them.
if "pkg_resources" not in sys.modules:
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        sys.modules["pkg_resources"] = types.SimpleNamespace(resource_stream=None)
from pytorch_wavelets import DWTForward  # noqa: E402

# ----------------------------------------------------------------------------- SAFE, transcribed

class SafeResNet(RefResNet):
    """SAFE's ``models/resnet.py``: the reference's network (transcribed in test_train_parity.py)
    built as ``resnet50(num_classes=2)``, with ``_preprocess_dwt`` in front instead of NPR."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(512, 2)

    def _preprocess_dwt(self, x, mode="symmetric", wave="bior1.3"):
        DWT_filter = DWTForward(J=1, mode=mode, wave=wave).to(x.device)
        Yl, Yh = DWT_filter(x)
        return T.Resize([x.shape[-2], x.shape[-1]])(Yh[0][:, :, 2, :, :])

    def forward(self, x):
        x = 1 * self._preprocess_dwt(x)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc1(x)


def safe_parameter_groups(model, weight_decay):
    """``optim_factory.get_parameter_groups`` (no layer decay, no skip list)."""
    groups = {}
    for name, param in model.named_parameters():
        no_decay = len(param.shape) == 1 or name.endswith(".bias")
        key = "no_decay" if no_decay else "decay"
        groups.setdefault(key, {"weight_decay": 0.0 if no_decay else weight_decay, "params": [], "lr_scale": 1.0})
        groups[key]["params"].append(param)
    return list(groups.values())


def safe_adjust_learning_rate(optimizer, epoch, lr, min_lr, warmup_epochs, epochs):
    """``utils.adjust_learning_rate``; ``epoch`` is fractional (step / len(loader) + epoch)."""
    if epoch < warmup_epochs:
        lr = lr * epoch / warmup_epochs
    else:
        lr = min_lr + (lr - min_lr) * 0.5 * (1. + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
    return lr


def safe_label_smoothing_ce(x, target, smoothing=0.1):
    """timm's ``LabelSmoothingCrossEntropy``, which SAFE's ``main_finetune.py`` uses."""
    logprobs = F.log_softmax(x, dim=-1)
    nll_loss = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
    smooth_loss = -logprobs.mean(dim=-1)
    return ((1.0 - smoothing) * nll_loss + smoothing * smooth_loss).mean()


def safe_model(seed=0, images=None):
    """A SAFE model with non-trivial BatchNorm statistics (a few batches in train mode)."""
    torch.manual_seed(seed)
    model = SafeResNet()
    if images is not None:
        with torch.no_grad():
            for _ in range(3):
                model(images)
    return model.eval()


def pixels(n=4, h=40, w=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("h,w", [(40, 40), (37, 53), (256, 256)])
def test_operator_matches_safes_preprocess_dwt(h, w):
    x = pixels(2, h, w).float() / 255  # ToTensor: SAFE has no Normalize
    ours = wavelet_hh(x)
    theirs = SafeResNet()._preprocess_dwt(x)
    assert ours.shape == theirs.shape == x.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
    assert ours.abs().max() > 0.05  # not trivially zero


@pytest.mark.parametrize("h,w", [(40, 40), (37, 53), (96, 64)])
def test_forward_matches_safe_from_the_same_weights(h, w):
    x = pixels(4, h, w)
    ref = safe_model(images=x.float() / 255)
    ours = resnet50(operator="dwt").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # SAFE's state dict, as it is
    with torch.no_grad():
        z = ref(x.float() / 255)
        logit = ours(normalize_batch(x))
    assert logit.shape == (4, 1)
    torch.testing.assert_close(logit[:, 0], z[:, 1] - z[:, 0], rtol=0, atol=2e-5)
    torch.testing.assert_close(torch.sigmoid(logit[:, 0]), torch.softmax(z, 1)[:, 1], rtol=0, atol=2e-6)
    assert (torch.softmax(z, 1)[:, 1].max() - torch.softmax(z, 1)[:, 1].min()) > 1e-4  # the inputs are told apart


def test_safe_checkpoint_format_loads(tmp_path):
    """SAFE's ``utils.save_model`` dict, with its argparse.Namespace, loads with weights_only=True
    and gives SAFE's probabilities; so does torch.hub."""
    x = pixels(3, 48, 48)
    ref = safe_model(images=x.float() / 255)
    optimizer = torch.optim.AdamW(safe_parameter_groups(ref, 0.01), lr=1e-3)
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": ref.state_dict(), "optimizer": optimizer.state_dict(), "epoch": "best",
                "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(),
                "args": argparse.Namespace(model="SAFE", input_size=256, transform_mode="crop", blr=0.01,
                                           data_path="data/datasets/train_ForenSynths/train", seed=None)}, path)
    model = load_detector(str(path), device="cpu")
    assert model.operator == "dwt" and model.threshold is None
    with torch.no_grad():
        expected = torch.softmax(ref(x.float() / 255), 1)[:, 1]
    torch.testing.assert_close(predict_proba(model, x), expected, rtol=0, atol=2e-6)
    hub = hubconf.npr(checkpoint=str(path), device="cpu")
    torch.testing.assert_close(predict_proba(hub, x), expected, rtol=0, atol=2e-6)


def test_operator_is_stored_and_an_unknown_one_is_refused(tmp_path):
    model = resnet50(operator="dwt")
    path = tmp_path / "ours.pth"
    torch.save({"model": model.state_dict(), "operator": "dwt"}, path)
    assert load_detector(str(path), device="cpu").operator == "dwt"
    torch.save({"model": model.state_dict(), "operator": "fft"}, path)
    with pytest.raises(Exception, match="operator 'fft'"):
        load_detector(str(path), device="cpu")
    with pytest.raises(ValueError, match="unknown artifact operator"):
        resnet50(operator="fft")


def test_optimizer_groups_match_safe():
    model = resnet50(operator="dwt")
    ours = recipe.build_optimizer(model, "adamw", 1e-3, 0.9, 0.01)
    theirs = safe_parameter_groups(model, 0.01)
    key = sorted((g["weight_decay"], sorted(id(p) for p in g["params"])) for g in theirs)
    assert sorted((g["weight_decay"], sorted(id(p) for p in g["params"])) for g in ours.param_groups) == key
    assert isinstance(ours, torch.optim.AdamW) and ours.defaults["eps"] == 1e-8
    for optim in ("adam", "sgd"):  # --weight_decay means the same with every optimiser
        other = recipe.build_optimizer(model, optim, 1e-3, 0.9, 0.01)
        assert sorted((g["weight_decay"], sorted(id(p) for p in g["params"])) for g in other.param_groups) == key
    plain = recipe.build_optimizer(model, "adamw", 1e-3, 0.9, 0.0)
    assert [g["weight_decay"] for g in plain.param_groups] == [0.0]  # not AdamW's own default of 0.01


@pytest.mark.parametrize("t", [0.0, 0.25, 0.999, 1.0, 1.5, 7.3, 19.99])
def test_cosine_schedule_matches_safe(t):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    expected = safe_adjust_learning_rate(opt, t, 5e-3, 1e-6, 1, 20)
    assert recipe.cosine_lr(t, 5e-3, 1e-6, 1, 20) == pytest.approx(expected, rel=1e-12, abs=0)
    # the one schedule of train.py at the same point: epoch int(t), step of 1000 per epoch
    from recipe import LRSchedule
    epoch, step = divmod(round(t * 1000), 1000)
    schedule = LRSchedule("cosine", 5e-3, 20, steps_per_epoch=1000, warmup_epochs=1, min_lr=1e-6)
    assert schedule.lr_at(epoch, step) == pytest.approx(expected, rel=1e-12, abs=0)


def test_smoothed_loss_is_safes_two_class_label_smoothing():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(16, 2, generator=g) * 3).requires_grad_()
    y = torch.randint(0, 2, (16,), generator=g)
    d = (z[:, 1] - z[:, 0]).detach().requires_grad_()
    ours, theirs = recipe.build_loss(0.1)(d, y.float()), safe_label_smoothing_ce(z, y, 0.1)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    ours.backward(), theirs.backward()
    torch.testing.assert_close(d.grad, z.grad[:, 1], rtol=1e-5, atol=1e-7)  # and -z.grad[:, 0]: the head's two rows
    torch.testing.assert_close(d.grad, -z.grad[:, 0], rtol=1e-5, atol=1e-7)
    assert isinstance(recipe.build_loss(0.0), nn.BCEWithLogitsLoss)  # the reference's loss, untouched


def test_optimizer_steps_match_safes_loop():
    """SAFE's loop (AdamW groups, per-step warm-up + cosine over 3 epochs of 2 steps) against
    ours (recipe.build_optimizer and LRSchedule.lr_at): from the same weights and the same gradients,
    every update is the same. (Whole trajectories cannot be compared beyond a step: the two
    wavelet packages differ by float rounding, and BatchNorm and Adam amplify that.)"""
    x = pixels(8, 32, 32)
    y = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(0))
    ref = SafeResNet().train()
    ours = resnet50(operator="dwt").train()
    ours.load_state_dict(ref.state_dict())
    steps_per_epoch, epochs, lr = 2, 3, 5e-3
    opt_ref = torch.optim.AdamW(safe_parameter_groups(ref, 0.01), lr=lr, eps=1e-8)
    opt_ours = recipe.build_optimizer(ours, "adamw", lr, 0.9, 0.01)
    from recipe import LRSchedule, set_lr
    schedule = LRSchedule("cosine", lr, epochs, steps_per_epoch, warmup_epochs=1, min_lr=1e-6)
    start = [p.detach().clone() for p in ours.parameters()]
    for step in range(steps_per_epoch * epochs):
        epoch, i = divmod(step, steps_per_epoch)
        safe_adjust_learning_rate(opt_ref, i / steps_per_epoch + epoch, lr, 1e-6, 1, epochs)
        set_lr(opt_ours, schedule.lr_at(epoch, i))
        opt_ref.zero_grad()
        safe_label_smoothing_ce(ref(x.float() / 255), y).backward()
        for p, q in zip(ref.parameters(), ours.parameters()):
            q.grad = p.grad.clone()
        opt_ref.step()
        opt_ours.step()
        for p, q in zip(ref.parameters(), ours.parameters()):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-7)
    assert max((p - q).abs().max().item() for p, q in zip(ours.parameters(), start)) > 1e-3  # it trained


# ----------------------------------------------------------------------------- the scripts

def test_safe_recipe_preset_and_flags_given_win():
    from networks import OPERATORS
    from options import parse_train_args, train_parser
    assert [a for a in train_parser()._actions if a.dest == "operator"][0].choices == list(OPERATORS)
    full = parse_train_args(["--dataroot", "x", "--recipe", "safe"])
    assert (full.optim, full.weight_decay, full.lr_schedule, full.warmup_epochs, full.min_lr, full.niter,
            full.label_smoothing, full.batch_size, full.cropSize, full.no_resize, full.rotate, full.color_jitter,
            full.mask_prob, full.mask_ratio, full.mask_patch, full.val_crop_only, full.no_flip) == \
        ("adamw", 0.01, "cosine", 1.0, 1e-6, 20, 0.1, 128, 256, True, 180.0, 0.5, 0.5, (0.0, 0.75), 16, True, False)
    assert full.lr == pytest.approx(0.01 * 128 / 256) and full.operator == "npr"  # the recipe leaves the operator
    mine = parse_train_args(["--dataroot", "x", "--recipe", "safe", "--batch_size", "64", "--niter", "3",
                             "--operator", "dwt"])
    assert (mine.batch_size, mine.niter, mine.operator) == (64, 3, "dwt") and mine.lr == pytest.approx(0.01 * 64 / 256)
    assert parse_train_args(["--dataroot", "x", "--recipe", "safe", "--lr", "0.1"]).lr == 0.1
    paper = parse_train_args(["--dataroot", "x"])
    assert (paper.optim, paper.lr, paper.lr_schedule, paper.label_smoothing, paper.weight_decay) == \
        ("adam", 0.0001, "step", 0.0, 0.0)
    mini = parse_train_args(["--recipe", "safe"])
    assert (mini.cropSize, mini.batch_size, mini.niter, mini.mask_patch) == (40, 32, 6, 2)


@pytest.mark.slow
def test_train_dwt_safe_recipe_then_every_script_without_a_flag(tiny_dataset, tmp_path):
    ck = str(tmp_path / "ck")
    r = run_script("train.py", *tiny_run(tiny_dataset, ck, "--name", "safe", "--operator", "dwt", "--recipe", "safe",
                                         "--niter", "2", "--mask_patch", "4"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Operator dwt, recipe safe: adamw" in r.stdout
    path = os.path.join(ck, "safe", "model_epoch_last.pth")
    state = torch.load(path, weights_only=True)
    assert state["operator"] == "dwt" and state["model"]["fc1.weight"].shape == (2, 512)
    # 24 training images / batch 4 = 6 steps per epoch; a checkpoint keeps the lr of the next step:
    # the end of the warm-up after epoch 0, the cosine's end after the last
    base = 0.01 * 4 / 256
    first = torch.load(os.path.join(ck, "safe", "model_epoch_0.pth"), weights_only=True)
    assert first["lr"] == pytest.approx(recipe.cosine_lr(1.0, base, 1e-6, 1, 2), rel=1e-12) == pytest.approx(base)
    assert state["lr"] == pytest.approx(recipe.cosine_lr(2.0, base, 1e-6, 1, 2), rel=1e-12) == pytest.approx(1e-6)

    suites = tmp_path / "suites"
    os.makedirs(suites)
    os.rename(tiny_dataset / "test", suites / "CNN_synth_testset")
    r = run_script("test.py", "--dataroot", str(suites), "--model_path", path, "--results_dir", str(tmp_path / "res"),
                   "--gpu_ids", "-1", "--batch_size", "4", "--num_threads", "0")
    assert r.returncode == 0 and "ProGAN" in r.stdout, r.stderr + r.stdout
    r = run_script("test.py", "--dataroot", str(suites), "--model_path", path, "--results_dir", str(tmp_path / "res2"),
                   "--gpu_ids", "-1", "--num_threads", "0", "--no_resize", "--center_crop", "--cropSize", "24")
    assert r.returncode == 0 and "no resize, centre crop 24" in r.stdout, r.stderr + r.stdout  # SAFE's evaluation
    r = run_script("test.py", "--dataroot", str(suites), "--model_path", path, "--center_crop", "--no_crop")
    assert r.returncode == 2 and "contradict" in r.stderr
    r = run_script("validate.py", "--dataroot", str(suites / "CNN_synth_testset" / "progan"), "--model_path", path,
                   "--gpu_ids", "-1", "--no_resize", "--no_crop")
    assert r.returncode == 0 and "6 images scored" in r.stdout, r.stderr + r.stdout
    images = sorted(str(p) for p in (suites / "CNN_synth_testset" / "progan").rglob("*.png"))
    out = str(tmp_path / "pred")
    r = run_script("predict.py", *images, "--model_path", path, "--gpu_ids", "-1", "--output", out,
                   "--visualize", str(tmp_path / "fig"))
    assert r.returncode == 0, r.stderr + r.stdout
    rows = {row["path"]: row["prob_fake"] for row in json.load(open(out + ".json"))["predictions"]}
    expected = predict_proba(load_detector(path, device="cpu"), images)
    assert [rows[p] for p in images] == pytest.approx(expected.tolist(), abs=1e-6)
    assert len(list((tmp_path / "fig").glob("*.png"))) == len(images)
