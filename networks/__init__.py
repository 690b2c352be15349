"""The NPR network, checkpoint I/O and the detector interface.

    from networks import load_detector, predict_proba
    model = load_detector("NPR.pth")
    probs = predict_proba(model, ["a.png", "b.jpg"])
"""
from .resnet import OPERATOR_NAMES, OPERATORS, NPRResNet, npr_residual, resnet50, wavelet_hh
from .checkpoint import (CheckpointError, checkpoint_operator, extract_state_dict, load_checkpoint,
                         load_state_dict_strict, save_checkpoint)
from .detector import ImageScore, batch_probs, load_detector, predict_proba, prepare_model, score_images

__all__ = ["OPERATOR_NAMES", "OPERATORS", "NPRResNet", "npr_residual", "resnet50", "wavelet_hh", "CheckpointError",
           "checkpoint_operator", "extract_state_dict", "load_checkpoint", "load_state_dict_strict", "save_checkpoint",
           "ImageScore", "batch_probs", "load_detector", "predict_proba", "prepare_model", "score_images"]
