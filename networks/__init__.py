"""The NPR network, checkpoint I/O and the detector interface.

    from networks import load_detector, predict_proba
    model = load_detector("NPR.pth")
    probs = predict_proba(model, ["a.png", "b.jpg"])
"""
from .checkpoint import (CheckpointError, checkpoint_operator, extract_state_dict, load_checkpoint,
                         load_state_dict_strict, save_checkpoint)
from .detector import (EvalConfig, ImageScore, batch_probs, load_detector, load_for_evaluation, predict_proba, prepare_model,
                       score_images)
from .operators import DEFAULT_OPERATOR, OPERATORS, Operator, get_operator, operator_for_head, register_operator
from .operators import npr_residual, wavelet_hh
from .resnet import NPRResNet, resnet50

__all__ = ["DEFAULT_OPERATOR", "OPERATORS", "Operator", "get_operator", "npr_residual", "operator_for_head",
           "register_operator", "wavelet_hh", "NPRResNet", "resnet50", "CheckpointError",
           "checkpoint_operator", "extract_state_dict", "load_checkpoint", "load_state_dict_strict", "save_checkpoint",
           "EvalConfig", "ImageScore", "batch_probs", "load_detector", "load_for_evaluation", "predict_proba",
           "prepare_model", "score_images"]
