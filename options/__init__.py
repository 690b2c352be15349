"""Command-line options, one parser per script; only argparse lives here.

* ``base_options``: the parser, value types, reference options accepted silently, and the
  groups several scripts share (data, images, device and speed, decision threshold).
* ``train_options``: train.py, with the NPR-mini preset.
* ``test_options``: test.py, validate.py and predict.py.

Each ``parse_*_args(argv)`` returns checked arguments, or raises ``util.UserError`` with one line.
"""
from .base_options import MINI_ROOT, print_options
from .test_options import (MINI_CHECKPOINT, parse_predict_args, parse_test_args, parse_validate_args, predict_parser,
                           test_parser, validate_parser)
from .train_options import MINI_RECIPE, parse_train_args, train_parser

__all__ = ["MINI_ROOT", "MINI_CHECKPOINT", "MINI_RECIPE", "print_options", "train_parser", "test_parser",
           "validate_parser", "predict_parser", "parse_train_args", "parse_test_args", "parse_validate_args",
           "parse_predict_args"]
