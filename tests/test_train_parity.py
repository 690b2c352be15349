"""Step-for-step parity of ``train.py`` with the reference's training loop.

The reference (chuangchuangtan/NPR-DeepfakeDetection: ``train.py``, ``networks/trainer.py``,
``networks/resnet.py``, ``data/__init__.py``, ``data/datasets.py``) is transcribed below with the
libraries it uses: torchvision ``ImageFolder`` per category in a ``ConcatDataset``,
``Resize`` / ``RandomCrop`` / ``RandomHorizontalFlip`` / ``ToTensor`` / ``Normalize``,
``BCEWithLogitsLoss`` and Adam, the model seeded as its ``seed_torch(100)`` leaves it.

Both loops see the same batches: the reference draws its shuffle, crop offsets and flips from
the global torch RNG, which no other code can reproduce, so here the reference's sampler
follows this project's epoch order and its ``RandomCrop`` / ``RandomHorizontalFlip`` replay
this project's draws (the pixels are still cut and flipped by torchvision). Everything else --
decoding, resizing, normalisation, the network, the loss, the optimiser, the lr schedule --
runs through the real ``train.main`` on one side and the transcription on the other, and the
per-step losses, the weights and the BatchNorm statistics must agree bit for bit.
"""
import os
import random
import tempfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.datasets as datasets
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

import train
from data.loaders import EpochSampler, sample_seed
from options import parse_train_args
from report import format_table
from util import UserError

SEED, BATCH, LOAD, CROP, EPOCHS, LR = 100, 8, 32, 28, 3, 2e-4
CLASSES = ("car", "cat")


# ----------------------------------------------------------------------------- the reference, transcribed

class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class RefResNet(nn.Module):
    def __init__(self, layers=(3, 4), scale_order="reference"):
        super().__init__()
        self.scale_order = scale_order
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Linear(512, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [RefBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [RefBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @staticmethod
    def interpolate(img, factor):
        return F.interpolate(F.interpolate(img, scale_factor=factor, mode="nearest", recompute_scale_factor=True),
                             scale_factor=1 / factor, mode="nearest", recompute_scale_factor=True)

    def forward(self, x):
        NPR = x - self.interpolate(x, 0.5)
        x = self.conv1(NPR * 2.0 / 3.0 if self.scale_order == "reference" else NPR * (2.0 / 3.0))
        x = self.maxpool(self.relu(self.bn1(x)))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        return self.fc1(x.view(x.size(0), -1))


class ReplayedRandomCrop(T.RandomCrop):
    """torchvision's RandomCrop, its offsets taken from a list instead of the torch RNG."""

    def __init__(self, size, offsets):
        super().__init__(size)
        self.offsets = offsets

    def get_params(self, img, output_size):
        top, left = self.offsets.pop(0)
        return top, left, output_size[0], output_size[1]


class ReplayedHorizontalFlip(T.RandomHorizontalFlip):
    def __init__(self, decisions):
        super().__init__()
        self.decisions = decisions

    def forward(self, img):
        return TF.hflip(img) if self.decisions.pop(0) else img


def replay_draws(seed, load=LOAD, crop=CROP):
    """The crop offsets and flip of one sample, drawn as ``TrainTransform`` draws them
    (no blur / JPEG: top, left, then the flip)."""
    rng = random.Random(seed)
    top, left = rng.randint(0, load - crop), rng.randint(0, load - crop)
    return (top, left), rng.random() < 0.5


def reference_training(root, drift=None):
    """The reference's loop on ``root/train`` over the same batches; returns (losses, state_dict, lr)."""
    drift = drift or {}
    torch.manual_seed(SEED)  # seed_torch(100), then Trainer builds resnet50(num_classes=1)
    model = RefResNet(scale_order=drift.get("scale_order", "reference"))
    betas = drift.get("betas", (0.9, 0.999))
    optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=LR, betas=betas)
    loss_fn = drift.get("loss", nn.BCEWithLogitsLoss())
    offsets, flips = [], []
    tf = T.Compose([T.Resize((LOAD, LOAD), interpolation=drift.get("interp", T.InterpolationMode.BILINEAR)),
                    ReplayedRandomCrop(CROP, offsets), ReplayedHorizontalFlip(flips), T.ToTensor(),
                    T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    dataset = torch.utils.data.ConcatDataset([datasets.ImageFolder(os.path.join(root, "train", c), tf)
                                              for c in CLASSES])
    labels = [t for d in dataset.datasets for t in d.targets]
    order = EpochSampler(labels, seed=SEED)
    losses, lr = [], LR
    model.train()
    for epoch in range(EPOCHS):
        indices = order.epoch_indices(epoch)
        for pos in range(len(indices)):
            (top, left), flip = replay_draws(sample_seed(SEED, epoch, pos))
            offsets.append((top, left))
            flips.append(flip)
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=indices, num_workers=0)
        for data in loader:
            output = model(data[0])
            loss = loss_fn(output.squeeze(1), data[1].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if epoch % 1 == 0 and epoch != 0:  # --delr_freq 1; networks/trainer.py adjust_learning_rate
            for group in optimizer.param_groups:
                group["lr"] *= 0.9
            lr = optimizer.param_groups[0]["lr"]
    return losses, model.state_dict(), lr


# ----------------------------------------------------------------------------- fixtures

def write_images(root):
    """Two categories of odd-sized PNGs (so the resize is real work), real = noise, fake = 2x2 blocks."""
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for cat in CLASSES:
            for label, n in (("0_real", 6), ("1_fake", 6)):
                folder = os.path.join(root, split, cat, label)
                os.makedirs(folder)
                for i in range(n if split == "train" else 2):
                    h, w = int(rng.integers(33, 45)), int(rng.integers(33, 45))
                    if label == "1_fake":
                        small = rng.integers(0, 256, (h // 2 + 1, w // 2 + 1, 3), dtype=np.uint8)
                        arr = small.repeat(2, 0).repeat(2, 1)[:h, :w]
                    else:
                        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    Image.fromarray(arr).save(os.path.join(folder, f"{i:02d}.png"))


class RecordingLoss(nn.Module):
    """Wraps the loss ``train.build_loss`` returns and records every value it computes."""

    def __init__(self, inner, values):
        super().__init__()
        self.inner, self.values = inner, values

    def forward(self, logits, target):
        loss = self.inner(logits, target)
        self.values.append(loss.item())
        return loss


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """train.main with the paper's command shape on the tiny set; (root, losses, state_dict, lr)."""
    root = str(tmp_path_factory.mktemp("parity") / "data")
    write_images(root)
    losses = []
    build_loss = train.build_loss
    train.build_loss = lambda *a: RecordingLoss(build_loss(*a), losses)
    try:
        code = train.main(["--dataroot", root, "--classes", ",".join(CLASSES), "--name", "parity",
                           "--checkpoints_dir", os.path.join(root, "ck"), "--batch_size", str(BATCH),
                           "--loadSize", str(LOAD), "--cropSize", str(CROP), "--niter", str(EPOCHS),
                           "--delr_freq", "1", "--lr", str(LR), "--seed", str(SEED), "--gpu_ids", "-1",
                           "--num_threads", "0"])
    finally:
        train.build_loss = build_loss
    assert code == 0
    ckpt = torch.load(os.path.join(root, "ck", "parity", "model_epoch_last.pth"), weights_only=True)
    return root, losses, ckpt["model"], ckpt["lr"]


def test_train_py_matches_the_reference_loop_bit_for_bit(ours):
    root, losses, state, lr = ours
    ref_losses, ref_state, ref_lr = reference_training(root)
    assert len(losses) == len(ref_losses) == EPOCHS * 3 >= 5  # 24 images, batch 8
    assert losses == ref_losses  # exact float equality, step by step
    assert set(state) == set(ref_state)
    differing = [k for k in ref_state if not torch.equal(state[k], ref_state[k])]
    assert not differing, f"weights / BatchNorm statistics differ: {differing[:5]}"
    assert any("running_var" in k for k in state) and int(state["bn1.num_batches_tracked"]) == EPOCHS * 3
    # lr *= 0.9 after epochs 1 and 2 (not after epoch 0); the first decay shapes epoch 2's steps.
    assert lr == ref_lr == pytest.approx(LR * 0.9 ** 2)


@pytest.mark.parametrize("drift", [
    {"scale_order": "folded"},                           # npr * (2/3) instead of npr * 2.0 / 3.0
    {"betas": (0.9, 0.99)},                              # another optimiser setting
    {"interp": T.InterpolationMode.BICUBIC},             # another resize
    {"loss": nn.SoftMarginLoss()},                       # another loss (targets still 0/1)
], ids=["scaling-order", "optimizer", "transform", "loss"])
def test_the_comparison_sees_each_kind_of_drift(ours, drift):
    """Each drift of the reference side breaks the equality above: the parity test can fail."""
    root, losses, state, _ = ours
    ref_losses, ref_state, _ = reference_training(root, drift)
    assert losses != ref_losses or any(not torch.equal(state[k], ref_state[k]) for k in ref_state)


def test_scaling_order_matters_in_float32():
    """``x * 2.0 / 3.0`` and ``x * (2.0 / 3.0)`` round differently for some inputs; the model
    uses the reference's order exactly."""
    from networks import npr_residual, resnet50
    x = torch.randn(1, 3, 64, 64)
    npr = npr_residual(x)
    assert not torch.equal(npr * 2.0 / 3.0, npr * (2.0 / 3.0))
    model = resnet50().eval()
    seen = {}
    model.conv1.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].clone()))
    with torch.no_grad():
        model(x)
    assert torch.equal(seen["x"], npr * 2.0 / 3.0)


@pytest.mark.slow
def test_exact_flag_trains_the_same_model(ours, tmp_path):
    """``--exact`` (cuDNN off, deterministic kernels: what matters on a GPU) gives the same
    weights as the default on the CPU."""
    root, _, state, _ = ours
    try:
        assert train.main(["--dataroot", root, "--classes", ",".join(CLASSES), "--name", "exact",
                           "--checkpoints_dir", str(tmp_path), "--batch_size", str(BATCH), "--loadSize", str(LOAD),
                           "--cropSize", str(CROP), "--niter", str(EPOCHS), "--delr_freq", "1", "--lr", str(LR),
                           "--gpu_ids", "-1", "--num_threads", "0", "--exact"]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.deterministic = False
    exact = torch.load(os.path.join(tmp_path, "exact", "model_epoch_last.pth"), weights_only=True)["model"]
    assert all(torch.equal(exact[k], state[k]) for k in state)


def test_exact_refuses_the_fast_paths():
    for flag in ("--amp", "--tf32", "--train_channels_last", "--compile"):
        with pytest.raises(UserError, match="--exact"):
            parse_train_args(["--exact", flag])


# ----------------------------------------------------------------------------- measuring the variants

def agreement(device="cpu"):
    """How far each training variant lands from the reference's loop after the same 9 steps.

    Runs ``train.main`` (default, ``--train_channels_last``) and the transcription of the
    reference loop above on the same small set and batches; prints the first step whose loss
    differs and the largest weight difference (``python tests/test_train_parity.py``).
    """
    root = os.path.join(tempfile.mkdtemp(prefix="npr-agreement-"), "data")
    write_images(root)
    ref_losses, ref_state, _ = reference_training(root)
    rows = []
    for variant, extra in (("default", []), ("channels_last", ["--train_channels_last"])):
        losses, build_loss = [], train.build_loss
        train.build_loss = lambda *a: RecordingLoss(build_loss(*a), losses)
        try:
            train.main(["--dataroot", root, "--classes", ",".join(CLASSES), "--name", variant,
                        "--checkpoints_dir", os.path.join(root, "ck"), "--batch_size", str(BATCH),
                        "--loadSize", str(LOAD), "--cropSize", str(CROP), "--niter", str(EPOCHS),
                        "--delr_freq", "1", "--lr", str(LR), "--gpu_ids", "-1" if device == "cpu" else "0",
                        "--num_threads", "0"] + extra)
        finally:
            train.build_loss = build_loss
        state = torch.load(os.path.join(root, "ck", variant, "model_epoch_last.pth"), weights_only=True)["model"]
        first = next((i for i, (a, b) in enumerate(zip(losses, ref_losses)) if a != b), None)
        rows.append({"variant": variant, "steps": len(losses), "first_differing_step": "none" if first is None else first,
                     "max_loss_diff": max(abs(a - b) for a, b in zip(losses, ref_losses)),
                     "max_weight_diff": max((state[k].float() - ref_state[k].float()).abs().max().item()
                                            for k in state if state[k].is_floating_point())})
    print(format_table(rows, [("variant", "training"), ("steps", "steps"), ("first_differing_step", "first differing step"),
                              ("max_loss_diff", "max |loss diff|"), ("max_weight_diff", "max |weight diff|")],
                       floatfmt="{:.3g}"))
    return rows


if __name__ == "__main__":
    agreement()
