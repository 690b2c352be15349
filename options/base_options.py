"""What every script shares: the parser, the value types, and the option groups used by more
than one script. Names and defaults are the reference's (chuangchuangtan/NPR-DeepfakeDetection,
``options/base_options.py``) wherever it has the option.

Every value is converted and checked by its ``type=`` (one readable line when it is wrong);
only checks that involve two options run after parsing.
"""
import argparse
import math
import sys

from data.benchmarks import MINI_ROOT
from data.images import MAX_DECODE_PIXELS
from files import inside_if_folder
from metrics import THRESHOLD_CHOICES
from util import OneLineErrorParser, UserError  # noqa: F401  (the scripts' parser, re-exported)


# The reference's options (base, train and test) with whether they take a value. A script
# accepts those it does not use without showing them in --help, so that the reference's
# commands still run; DIFFERENCES.md lists them.
REFERENCE_OPTIONS = {
    "mode": True, "arch": True, "rz_interp": True, "blur_prob": True, "blur_sig": True, "jpg_prob": True,
    "jpg_method": True, "jpg_qual": True, "dataroot": True, "classes": True, "class_bal": False,
    "batch_size": True, "loadSize": True, "cropSize": True, "gpu_ids": True, "name": True, "epoch": True,
    "num_threads": True, "checkpoints_dir": True, "serial_batches": False, "resize_or_crop": True,
    "no_flip": False, "init_type": True, "init_gain": True, "suffix": True, "delr_freq": True,
    "earlystop_epoch": True, "data_aug": False, "optim": True, "new_optim": False, "loss_freq": True,
    "save_latest_freq": True, "save_epoch_freq": True, "continue_train": False, "epoch_count": True,
    "last_epoch": True, "train_split": True, "val_split": True, "niter": True, "beta1": True, "lr": True,
    "model_path": True, "no_resize": False, "no_crop": False, "eval": False,
}


class Ignored(argparse.Action):
    """A reference option this script does not use: accepted, never stored, not in --help."""

    def __init__(self, option_strings, dest, nargs=None, **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, nargs=nargs, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        pass


def accept_reference_options(p):
    """Accept, silently, every reference option that ``p`` does not define."""
    for name, takes_value in REFERENCE_OPTIONS.items():
        try:
            p.add_argument(f"--{name}", action=Ignored, nargs=None if takes_value else 0)
        except argparse.ArgumentError:
            pass  # the script uses this option
    return p


# ----------------------------------------------------------------------------- value types

def _type(name, convert):
    """A ``type=`` for argparse: ``convert(text)`` raising ValueError with a readable reason."""
    def parse(text):
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name
    return parse


def _numbers(text, kind=float):
    try:
        vals = tuple(kind(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"'{text}': expected {'integers' if kind is int else 'numbers'} separated by commas") from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"'{text}': nan and inf are not values here")
    return vals


def _in_range(kind, lo, hi, what, lo_open=False, hi_open=False):
    def convert(text):
        try:
            v = kind(text)
        except ValueError:
            raise ValueError(f"'{text}' is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(v):  # nan passes every comparison below
            raise ValueError(f"'{text}': nan and inf are not values here")
        if (v <= lo if lo_open else v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
            raise ValueError(f"{v}: {what}")
        return v
    return convert


def _choices_list(choices):
    def convert(text):
        items = tuple(m.strip() for m in str(text).split(",") if m.strip())
        if not items or any(m not in choices for m in items):
            raise ValueError(f"'{text}': choose from {', '.join(choices)} (comma-separated)")
        return items
    return convert


def _range_or_value(lo, hi):
    def convert(text):
        vals = _numbers(text)
        if not 1 <= len(vals) <= 2 or not all(lo <= v <= (hi if hi is not None else v) for v in vals):
            bounds = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
            raise ValueError(f"'{text}': one value or 'lo,hi', each {bounds}")
        return vals
    return convert


def _jpeg_qualities(text):
    """'75' -> (75,); '30,100' -> 30..100 (the reference's range); 'a,b,c' -> those values."""
    quals = _numbers(text, int)
    if not quals or any(not 1 <= q <= 100 for q in quals):
        raise ValueError(f"'{text}': qualities are integers in 1..100")
    return tuple(range(quals[0], quals[1] + 1)) if len(quals) == 2 else quals


def _threshold(text):
    if text in THRESHOLD_CHOICES:
        return text
    return _in_range(float, 0, 1, f"a probability in (0, 1), or one of {', '.join(THRESHOLD_CHOICES)}",
                     lo_open=True, hi_open=True)(text)


def _shard(text):
    """'2/4' -> (2, 4): the second of four parts."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"'{text}': expected k/n, e.g. 2/4 for the second of four parts") from None
    if not 1 <= k <= n:
        raise ValueError(f"'{text}': k must lie in 1..n")
    return k, n


def _gpu_ids(text):
    """'0' / '0,1' / '-1' as given, once each part is checked to be an integer."""
    try:
        ids = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"'{text}': CUDA device ids, e.g. 0 or 0,1; -1 for the CPU") from None
    if len(ids) > 1 and min(ids) < 0:
        raise ValueError(f"'{text}': -1 (the CPU) stands alone")
    return str(text).strip()


def _output_stem(text):
    """A path to which the extensions are added; a folder (a path ending in '/', or one that exists)
    gets ``predictions`` inside it, so that ``--output out/`` writes ``out/predictions.csv``."""
    if not str(text).strip():
        raise ValueError("an empty name: give a path such as results/predictions")
    return inside_if_folder(text, "predictions")


def _comma_list(text):
    return tuple(c.strip() for c in str(text).split(",") if c.strip())


probability = _type("probability", _in_range(float, 0, 1, "a probability must lie in [0, 1]"))
positive_int = _type("positive integer", _in_range(int, 1, None, "must be at least 1"))
# A square side whose image stays within Pillow's decode limit (9459 px): a resize to 60000 px
# asked for 10 GB per image.
MAX_SIDE = math.isqrt(MAX_DECODE_PIXELS)
size = _type("size", _in_range(int, 2, MAX_SIDE, f"a side of 2 to {MAX_SIDE} pixels (larger squares are above the "
                                                  "decode limit)"))
non_negative_int = _type("non-negative integer", _in_range(int, 0, None, "must be >= 0"))
non_negative = _type("non-negative number", _in_range(float, 0, None, "must be >= 0"))
rate = _type("rate", _in_range(float, 0, 1, "a rate in [0, 1)", hi_open=True))
decay = _type("decay", _in_range(float, 0, 1, "a decay in [0, 1), e.g. 0.999 (0 turns it off)", hi_open=True))
learning_rate = _type("learning rate", _in_range(float, 0, None, "the learning rate must be positive", lo_open=True))
sigma_range = _type("sigma", _range_or_value(0, None))
ratio_range = _type("ratio", _range_or_value(0, 1))
jpeg_qualities = _type("JPEG qualities", _jpeg_qualities)
gpu_ids = _type("GPU ids", _gpu_ids)
jpeg_methods = _type("JPEG encoders", _choices_list(("cv2", "pil")))
interpolations = _type("interpolations", _choices_list(("bilinear", "bicubic", "lanczos", "nearest")))
threshold = _type("threshold", _threshold)
comma_list = _type("list", _comma_list)
shard = _type("shard", _shard)
output_stem = _type("output", _output_stem)
port = _type("port", _in_range(int, 1, 65535, "a TCP port is a number in 1..65535"))


# ----------------------------------------------------------------------------- shared groups

def add_data_options(p, dataroot_help=None):
    """Where the images are and how they reach the model (every script but predict.py);
    ``dataroot_help`` for a script without the NPR-mini fallback."""
    g = p.add_argument_group("data")
    g.add_argument("--dataroot", default=None, help=dataroot_help or
                   f"dataset root; when omitted, the built-in mini benchmark ({MINI_ROOT}) is built and used")
    g.add_argument("--batch_size", type=positive_int, default=64, help="images per batch")
    g.add_argument("--loadSize", type=size, default=256, help="resize images to loadSize x loadSize")
    g.add_argument("--cropSize", type=size, default=224, help="crop images to cropSize x cropSize")
    g.add_argument("--num_threads", type=non_negative_int, default=None,
                   help="data-loading worker processes, capped by the CPU count (default: chosen for the device: "
                        "all cores up to 8 for a GPU, a quarter of them on the CPU; docs/speed.md)")
    add_image_options(g)
    return g


def add_image_options(g):
    g.add_argument("--strict_images", action="store_true",
                   help="stop on the first unreadable or too small (< 2 px) image instead of skipping it")
    g.add_argument("--skip_truncated", action="store_true",
                   help="skip truncated image files; by default they are decoded as far as they go and scored, as "
                        "the reference does (PIL LOAD_TRUNCATED_IMAGES), and counted in the 'truncated' column")


# On/off switches of the "device and speed" group: the evaluation ones keep the predictions;
# the training ones are off by default, which is the reference's numerics.
SPEED_SWITCHES = {
    "amp": "float16 autocast on CUDA, with a gradient scaler when training (moves the probabilities slightly)",
    "compile": "torch.compile the model",
    "tf32": "let CUDA convolutions and matmuls use TF32 (faster on Ampere / Hopper; changes the numbers; off by "
            "default: the reference computed in float32)",
    "no_channels_last": "evaluate in the contiguous memory format (same predictions, slower)",
    "no_fold_bn": "evaluate without folding BatchNorm into the convolutions (same predictions, slower)",
}
TRAINING_SWITCHES = {
    "train_channels_last": "train in the channels-last memory format (faster, but not step-for-step identical to "
                           "the reference's training: DIFFERENCES.md)",
    "deterministic": "deterministic kernels (bit-exact resume on the CPU)",
    "exact": "the reference's numerics on any device: cuDNN disabled and deterministic kernels, as its seed_torch "
             "does; no TF32, AMP, compile or channels-last (slow on a GPU)",
    "sync_bn": "under torchrun on CUDA: BatchNorm statistics over the whole global batch (SyncBatchNorm), as the "
               "paper's one GPU computes them; without it each process normalises over its own share "
               "(docs/scaling.md)",
}


def add_device_options(p, training=False):
    """--gpu_ids and the speed switches (with ``training``, also the training-step ones)."""
    g = p.add_argument_group("device and speed")
    g.add_argument("--gpu_ids", type=gpu_ids, default="0", help="CUDA device id, e.g. 0; -1 runs on the CPU")
    for name, text in {**SPEED_SWITCHES, **(TRAINING_SWITCHES if training else {})}.items():
        g.add_argument(f"--{name}", action="store_true", help=text)
    return g


def add_weights_option(g):
    """--ema_weights: which of a checkpoint's weights to use (every script that loads one)."""
    g.add_argument("--ema_weights", action="store_true",
                   help="use the checkpoint's moving-average weights (train.py --ema) and their threshold")


def add_threshold_options(p, use, default):
    """The decision threshold (``use``: what it decides) and which weights to use."""
    g = p.add_argument_group("decision threshold (tables always keep ACC at 0.5, the paper's metric)")
    add_weights_option(g)
    choice = g.add_mutually_exclusive_group()
    choice.add_argument("--threshold", type=threshold, default=default,
                        help=f"threshold for {use}: a probability, or "
                             + "; ".join(f"{k}: {v}" for k, v in THRESHOLD_CHOICES.items()))
    choice.add_argument("--calibrate_real", default=None,
                        help="choose the threshold on this folder of real images instead: the lowest one that calls "
                             "at most --target_fpr of them fake")
    g.add_argument("--target_fpr", type=rate, default=0.05, help="false-positive rate for --calibrate_real")
    return g


def check_sizes(args):
    if args.cropSize > args.loadSize:
        raise UserError(f"--cropSize {args.cropSize} is larger than --loadSize {args.loadSize}; "
                        "the crop is taken from the resized image, so use cropSize <= loadSize")


def print_options(args, file=sys.stdout):
    lines = [f"{k:>20}: {v}" for k, v in sorted(vars(args).items())]
    print("----------------- Options ---------------\n" + "\n".join(lines) +
          "\n----------------- End -------------------", file=file)
