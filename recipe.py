"""The training recipe: loss, optimiser and learning-rate schedule, as train.py builds them.

* The reference's (chuangchuangtan/NPR-DeepfakeDetection, ``networks/trainer.py``): binary
  cross-entropy on one logit, Adam with betas (beta1, 0.999), and ``lr *= 0.9`` after every
  ``delr_freq`` epochs (after epoch e when ``e % delr_freq == 0 and e != 0``).
* SAFE's (Li et al., KDD 2025; Ouxiang-Li/SAFE ``main_finetune.py``, ``util/misc.py``): label
  smoothing, AdamW with decay on weights only, and a per-step linear warm-up then half cosine.

``LRSchedule.lr_at(epoch, step)`` is the one schedule: both kinds, as a function of where
training is, so that resuming at any step sets the same lr as an uninterrupted run.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

LR_DECAY = 0.9  # the reference's networks/trainer.py: lr *= 0.9 after every delr_freq epochs


class SmoothedBCEWithLogits(nn.Module):
    """Binary cross-entropy towards ``1 - s/2`` (fake) and ``s/2`` (real). On the log-odds of a
    two-class head this is SAFE's loss, timm's ``LabelSmoothingCrossEntropy(s)``."""

    def __init__(self, smoothing):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits, labels):
        target = labels * (1.0 - self.smoothing) + self.smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, target)


def build_loss(label_smoothing=0.0):
    """The reference's loss: binary cross-entropy on the logit (label 1 = fake); with
    ``label_smoothing``, SAFE's smoothed targets."""
    return SmoothedBCEWithLogits(label_smoothing) if label_smoothing else nn.BCEWithLogitsLoss()


def parameter_groups(model, weight_decay):
    """The parameters, split as SAFE's ``get_parameter_groups`` does when ``weight_decay`` is on:
    decay on the weights of convolutions and linear layers, none on biases and BatchNorm."""
    if not weight_decay:
        return model.parameters()
    return [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]


OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULES = ("step", "cosine")  # LRSchedule.kind


def build_optimizer(model, optim, lr, beta1=0.9, weight_decay=0.0):
    """Adam (betas (beta1, 0.999)) or SGD without momentum, as the reference; AdamW (eps 1e-8)
    as SAFE. ``weight_decay`` (0 in the reference) goes through ``parameter_groups``."""
    params = parameter_groups(model, weight_decay)
    if optim == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(beta1, 0.999), eps=1e-8, weight_decay=0.0)
    if optim == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999))
    return torch.optim.SGD(params, lr=lr, momentum=0.0)


def cosine_lr(epoch_progress, lr, min_lr, warmup_epochs, epochs):
    """SAFE's per-step schedule (its ``utils.adjust_learning_rate``) at ``epoch_progress``
    epochs (fractional): linear warm-up from 0, then a half cosine from ``lr`` to ``min_lr``."""
    if epoch_progress < warmup_epochs:
        return lr * epoch_progress / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch_progress - warmup_epochs)
                                                          / (epochs - warmup_epochs)))


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate at every step of a run: ``kind`` "step" (the reference's) or "cosine" (SAFE's)."""
    kind: str
    lr: float
    epochs: int
    steps_per_epoch: int = 1
    delr_freq: int = 20
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6

    def lr_at(self, epoch, step=0):
        """The lr of step ``step`` (counted from 0) of epoch ``epoch`` (counted from 0)."""
        if self.kind == "cosine":
            return cosine_lr(epoch + step / self.steps_per_epoch, self.lr, self.min_lr, self.warmup_epochs,
                             self.epochs)
        lr = self.lr
        # One multiplication per decay, as the reference's optimiser sees them (the same float):
        # epochs 1 .. epoch - 1 that divide by delr_freq each ended with one.
        for _ in range(max(epoch - 1, 0) // self.delr_freq):
            lr *= LR_DECAY
        return lr


def set_lr(optimizer, lr):
    """Set every parameter group's lr."""
    for g in optimizer.param_groups:
        g["lr"] = lr
