"""torch.hub entry point (local use; nothing is downloaded):

    model = torch.hub.load("path/to/this/repo", "npr", source="local", checkpoint="NPR.pth")
    model = torch.hub.load("path/to/this/repo", "npr", source="local", checkpoint="checkpoint-best.pth")  # SAFE's

A checkpoint brings its artifact operator; without one, ``operator="dwt"`` builds SAFE's model.
"""
from networks import load_detector, resnet50

dependencies = ["torch", "numpy", "PIL"]


def npr(checkpoint=None, device=None, ema=False, operator="npr", **kwargs):
    """The NPR detector (``operator="dwt"``: SAFE's); with ``checkpoint``, loaded from that file
    in eval mode on ``device``, with the checkpoint's operator (``ema=True``: the moving-average
    weights of a ``train.py --ema`` checkpoint)."""
    if checkpoint is None:
        return resnet50(num_classes=1, operator=operator, **kwargs)
    return load_detector(checkpoint, device=device, ema=ema)
