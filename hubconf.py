"""torch.hub entry point (local use; nothing is downloaded):

    model = torch.hub.load("path/to/this/repo", "npr", source="local", checkpoint="NPR.pth")
    model = torch.hub.load("path/to/this/repo", "npr", source="local", checkpoint="checkpoint-best.pth")  # SAFE's

A checkpoint brings its artifact operator; without one, ``operator`` names one of
``networks.OPERATORS`` (SAFE's is ``dwt``).
"""
from networks import DEFAULT_OPERATOR, load_detector, resnet50

dependencies = ["torch", "numpy", "PIL"]


def npr(checkpoint=None, device=None, ema=False, operator=DEFAULT_OPERATOR, **kwargs):
    """The NPR detector with the artifact ``operator`` of ``networks.OPERATORS``; with ``checkpoint``, loaded from that file
    in eval mode on ``device``, with the checkpoint's operator (``ema=True``: the moving-average
    weights of a ``train.py --ema`` checkpoint)."""
    if checkpoint is None:
        return resnet50(num_classes=1, operator=operator, **kwargs)
    return load_detector(checkpoint, device=device, ema=ema)
