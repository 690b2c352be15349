"""The NPR network, checkpoint I/O and the detector interface.

    from networks import load_detector, predict_proba
    model = load_detector("NPR.pth")
    probs = predict_proba(model, ["a.png", "b.jpg"])
"""
from .resnet import NPRResNet, npr_residual, resnet50
from .checkpoint import (CheckpointError, extract_state_dict, load_checkpoint, load_state_dict_strict,
                         save_checkpoint)
from .detector import ImageScore, load_detector, predict_proba, prepare_model, score_images

__all__ = ["NPRResNet", "npr_residual", "resnet50", "CheckpointError", "extract_state_dict", "load_checkpoint",
           "load_state_dict_strict", "save_checkpoint", "ImageScore", "load_detector", "predict_proba",
           "prepare_model", "score_images"]
