"""recipe.LRSchedule against the reference's step decay (networks/trainer.py and train.py of
chuangchuangtan/NPR-DeepfakeDetection); SAFE's cosine is checked in tests/test_safe.py."""
import pytest
import torch
import torch.nn as nn

from recipe import LRSchedule


def reference_lrs(lr, epochs, delr_freq):
    """The lr each epoch trains with in the reference: an optimiser whose lr is multiplied by
    0.9 at the end of epoch e when ``e % delr_freq == 0 and e != 0``."""
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr)
    out = []
    for epoch in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        if epoch % delr_freq == 0 and epoch != 0:
            for g in optimizer.param_groups:
                g["lr"] *= 0.9
    return out


@pytest.mark.parametrize("lr,delr_freq", [(0.0002, 10), (0.0001, 20), (0.0005, 2), (0.0003, 1)])
def test_step_schedule_is_the_references_bit_for_bit(lr, delr_freq):
    schedule = LRSchedule("step", lr, epochs=60, delr_freq=delr_freq)
    expected = reference_lrs(lr, 60, delr_freq)
    assert [schedule.lr_at(e, s) for e in range(60) for s in (0, 7)] == [v for v in expected for _ in (0, 7)]
    assert len(set(expected)) > 1  # the decay happened


def test_cosine_schedule_warms_up_then_ends_at_min_lr():
    schedule = LRSchedule("cosine", 1e-3, epochs=4, steps_per_epoch=10, warmup_epochs=1, min_lr=1e-6)
    assert schedule.lr_at(0, 0) == 0.0 and schedule.lr_at(0, 5) == pytest.approx(5e-4)
    assert schedule.lr_at(1, 0) == pytest.approx(1e-3) and schedule.lr_at(4, 0) == pytest.approx(1e-6)
    lrs = [schedule.lr_at(e, s) for e in range(1, 4) for s in range(10)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
