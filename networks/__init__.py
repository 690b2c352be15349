"""The NPR network and checkpoint I/O.

    from networks import load_detector, predict_proba
    model = load_detector("NPR.pth")
    probs = predict_proba(model, ["a.png", "b.jpg"])
"""
from .resnet import NPRResNet, npr_residual, resnet50
from .checkpoint import (CheckpointError, extract_state_dict, load_checkpoint, load_state_dict_strict,
                         save_checkpoint)
from .detector import load_detector, predict_proba

__all__ = ["NPRResNet", "npr_residual", "resnet50", "CheckpointError", "extract_state_dict", "load_checkpoint",
           "load_state_dict_strict", "save_checkpoint", "load_detector", "predict_proba"]
