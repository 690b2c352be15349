"""The exponential moving average of the weights (``train.py --ema``), in one place: how it is
updated, how its BatchNorm statistics are recomputed, and the checkpoint keys it lives under.

The average is torch's ``AveragedModel`` over the parameters and the BatchNorm buffers
(``use_buffers``), updated after every optimiser step.
"""
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from data.transforms import normalize_batch

# The checkpoint keys: the averaged state dict, the number of updates, and the decision
# threshold train.py chose for the averaged weights.
WEIGHTS_KEY, COUNT_KEY, THRESHOLD_KEY = "model_ema", "ema_n_averaged", "threshold_ema"


class EMA:
    """The moving average of ``model`` with ``decay``; ``module`` is the averaged model."""

    def __init__(self, model, decay):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self):
        return self.averaged.module

    def update(self, model):
        """One update towards ``model``'s current weights (after every optimiser step)."""
        self.averaged.update_parameters(model)

    def recompute_bn(self, loader, device):
        """Recompute the averaged model's BatchNorm statistics (torch's ``update_bn``) on the uint8
        batches of ``loader`` (train.py: an evaluation loader with the validation transform): the
        average of the raw model's statistics does not describe the averaged weights while those
        still move fast."""
        update_bn((normalize_batch(b.images.to(device)) for b in loader if len(b.images)), self.module)

    def state(self):
        """The checkpoint entries of the average."""
        return {WEIGHTS_KEY: self.module.state_dict(), COUNT_KEY: int(self.averaged.n_averaged)}

    def load(self, ckpt):
        """Restore the average from a checkpoint written with ``state``; False when it holds none."""
        if not ckpt.get(WEIGHTS_KEY):
            return False
        self.module.load_state_dict(ckpt[WEIGHTS_KEY])
        self.averaged.n_averaged.fill_(ckpt[COUNT_KEY])
        return True


def empty_state():
    """The checkpoint entries of a run without an average."""
    return {WEIGHTS_KEY: None, COUNT_KEY: 0}
