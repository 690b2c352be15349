"""torch.hub entry point (local use; nothing is downloaded):

    model = torch.hub.load("path/to/this/repo", "npr", source="local", checkpoint="NPR.pth")
"""
from networks import load_detector, resnet50

dependencies = ["torch", "numpy", "PIL"]


def npr(checkpoint=None, device=None, ema=False, **kwargs):
    """The NPR detector; with ``checkpoint``, loaded from that file in eval mode on ``device``
    (``ema=True``: the moving-average weights of a ``train.py --ema`` checkpoint)."""
    if checkpoint is None:
        return resnet50(num_classes=1, **kwargs)
    return load_detector(checkpoint, device=device, ema=ema)
