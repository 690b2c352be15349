"""Command-line options: the names and defaults of the reference code
(chuangchuangtan/NPR-DeepfakeDetection, ``options/*.py``), plus a few of ours.

Only argparse lives here. Each script calls ``train_parser()`` / ``test_parser()`` and then
``check_*`` to turn invalid values into one readable line.
"""
import argparse
import sys

from util import UserError

MINI_ROOT = "datasets/npr-mini"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports unknown flags and bad values in one line, without the usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _new_parser(description):
    return OneLineErrorParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_options(p):
    g = p.add_argument_group("data and model")
    g.add_argument("--dataroot", default=None,
                   help=f"dataset root; when omitted, the built-in mini benchmark ({MINI_ROOT}) is built and used")
    g.add_argument("--classes", default="", help="comma-separated category folders to use (empty: all)")
    g.add_argument("--class_bal", action="store_true", help="sample real and fake images with equal probability")
    g.add_argument("--batch_size", type=int, default=64, help="images per batch")
    g.add_argument("--loadSize", type=int, default=256, help="resize images to loadSize x loadSize")
    g.add_argument("--cropSize", type=int, default=224, help="crop images to cropSize x cropSize")
    g.add_argument("--gpu_ids", default="0", help="CUDA device id, e.g. 0; -1 runs on the CPU")
    g.add_argument("--name", default="experiment_name", help="experiment name (used as given)")
    g.add_argument("--epoch", default="latest", help="which checkpoint to load: latest, best, last or an epoch number")
    g.add_argument("--num_threads", type=int, default=8, help="data-loading worker processes (capped by the CPU count; when not given, a quarter of the cores on the CPU device, see README Speed)")
    g.add_argument("--checkpoints_dir", default="./checkpoints", help="where experiments are written")
    g.add_argument("--serial_batches", action="store_true", help="do not shuffle the training data")
    g.add_argument("--no_flip", action="store_true", help="no random horizontal flip when training")
    g.add_argument("--init_type", default="normal", help="kept for reference compatibility; the network uses Kaiming init")
    g.add_argument("--init_gain", type=float, default=0.02, help="kept for reference compatibility")
    g.add_argument("--suffix", default="", help="kept for reference compatibility")
    g.add_argument("--delr_freq", type=int, default=20, help="multiply lr by 0.9 after every delr_freq epochs")
    g.add_argument("--rz_interp", default="bilinear",
                   help="resize interpolation(s), comma list sampled per image: bilinear, bicubic, lanczos, nearest")
    g.add_argument("--blur_prob", type=float, default=0.0, help="probability of Gaussian blur augmentation")
    g.add_argument("--blur_sig", default="0.5", help="blur sigma: one value, or 'lo,hi' sampled uniformly")
    g.add_argument("--jpg_prob", type=float, default=0.0, help="probability of JPEG augmentation")
    g.add_argument("--jpg_method", default="cv2", help="JPEG encoder(s), comma list: cv2 or pil (cv2 falls back to pil)")
    g.add_argument("--jpg_qual", default="75", help="JPEG quality: one value, a comma list, or 'lo,hi' range")
    g.add_argument("--mode", default="binary", choices=["binary"], help="dataset mode (binary 0_real / 1_fake)")
    g.add_argument("--arch", default="res50", choices=["res50"], help="network (NPR's truncated ResNet-50)")
    g.add_argument("--seed", type=int, default=100, help="random seed (the paper uses 100)")
    g.add_argument("--strict_images", action="store_true",
                   help="stop on the first unreadable or too small (< 2 px) image instead of skipping it")
    g.add_argument("--skip_truncated", action="store_true",
                   help="skip truncated image files; by default they are decoded as far as they go and scored, as the "
                        "reference does (PIL LOAD_TRUNCATED_IMAGES), and counted in the 'truncated' column")
    return p


def add_speed_options(p):
    g = p.add_argument_group("speed")
    g.add_argument("--amp", action="store_true", help="float16 autocast on CUDA, with a gradient scaler when training (probabilities move by ~1e-3)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--no_channels_last", action="store_true",
                   help="evaluate in the contiguous memory format (same predictions to 1e-4, slower)")
    g.add_argument("--tf32", action="store_true",
                   help="let CUDA convolutions and matmuls use TF32 (faster on Ampere / Hopper; changes the numbers; "
                        "off by default: the reference computed in float32)")
    g.add_argument("--no_fold_bn", action="store_true",
                   help="evaluate without folding BatchNorm into the convolutions (same predictions to 1e-6, slower)")
    return p


def train_parser():
    p = _new_parser("Train the NPR detector (paper recipe: --batch_size 32 --lr 0.0002 --delr_freq 10 --niter 50).")
    add_common_options(p)
    add_speed_options(p)
    g = p.add_argument_group("training")
    g.add_argument("--earlystop_epoch", type=int, default=0,
                   help="stop after this many epochs without val-AP improvement; 0 (default) trains all --niter "
                        "epochs, as the reference does (it parses this option but never uses it)")
    g.add_argument("--data_aug", action="store_true", help="kept for reference compatibility; use --blur_prob / --jpg_prob")
    g.add_argument("--optim", default="adam", choices=["adam", "sgd"], help="optimiser")
    g.add_argument("--new_optim", action="store_true", help="with --continue_train: start a fresh optimiser")
    g.add_argument("--loss_freq", type=int, default=400, help="log the loss every loss_freq steps")
    g.add_argument("--save_latest_freq", type=int, default=2000, help="save the latest checkpoint every this many steps")
    g.add_argument("--save_epoch_freq", type=int, default=20, help="keep a copy of the checkpoint every this many epochs")
    g.add_argument("--continue_train", action="store_true", help="resume from the latest checkpoint of --name")
    g.add_argument("--epoch_count", type=int, default=1, help="kept for reference compatibility")
    g.add_argument("--last_epoch", type=int, default=-1, help="kept for reference compatibility")
    g.add_argument("--train_split", default="train", help="training split folder under --dataroot")
    g.add_argument("--val_split", default="val", help="validation split folder under --dataroot")
    g.add_argument("--niter", type=int, default=1000, help="number of epochs")
    g.add_argument("--beta1", type=float, default=0.9, help="Adam beta1")
    g.add_argument("--lr", type=float, default=0.0001, help="initial learning rate")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume on the CPU)")
    g.add_argument("--exact", action="store_true",
                   help="the reference's numerics on any device: cuDNN disabled and deterministic kernels, as its "
                        "seed_torch does; no TF32, AMP, compile or channels-last (slow on a GPU)")
    g.add_argument("--train_channels_last", action="store_true",
                   help="train in the channels-last memory format (faster, but not step-for-step identical to the "
                        "reference's training: see DIFFERENCES.md)")
    g.add_argument("--no_resize", action="store_true",
                   help="train without resizing: images smaller than cropSize are tiled up, then randomly cropped "
                        "(the authors' GenImage recipe)")
    g.add_argument("--cache_dir", default=None, help="decode the train split once into a uint8 cache here")
    g.add_argument("--rebuild", action="store_true", help="rebuild the mini benchmark before training")
    g = p.add_argument_group("beyond the paper (all off by default; a flag given without a value takes the SAFE "
                             "recipe's setting, Li et al. KDD 2025; that recipe is "
                             "--no_resize --rotate --color_jitter --mask_prob)")
    g.add_argument("--rotate", type=float, nargs="?", const=180.0, default=0.0, metavar="DEG",
                   help="random rotation by up to +-DEG degrees after the crop and flip (nearest neighbour, black "
                        "corners; torchvision's RandomRotation); alone: 180 (SAFE)")
    g.add_argument("--color_jitter", type=float, nargs="?", const=0.5, default=0.0, metavar="J",
                   help="brightness, contrast and saturation factors drawn in [1-J, 1+J], applied in a random order "
                        "(torchvision's ColorJitter(J, J, J)); alone: 0.5 (SAFE)")
    g.add_argument("--mask_prob", type=float, nargs="?", const=0.5, default=0.0, metavar="P",
                   help="probability of random patch masking: distinct cells of a --mask_patch grid blacked out, "
                        "--mask_ratio of the crop; alone: 0.5 (SAFE)")
    g.add_argument("--mask_ratio", default="0,0.75",
                   help="part of the crop masked: one value or 'lo,hi' sampled uniformly (SAFE: 0,0.75)")
    g.add_argument("--mask_patch", type=int, default=16, help="masked patch size in pixels (SAFE: 16)")
    g.add_argument("--ema", type=float, nargs="?", const=0.999, default=0.0, metavar="DECAY",
                   help="also keep an exponential moving average of the weights and BatchNorm statistics "
                        "(torch.optim.swa_utils.AveragedModel), updated after every step, saved as 'model_ema' in "
                        "each checkpoint and resumed; evaluate it with test.py / validate.py / predict.py --ema. "
                        "Alone: 0.999 (for runs of many thousand steps; on NPR-mini's 480 steps 0.95 helped and 0.99 "
                        "hurt: README, Beyond the paper)")
    g.add_argument("--ema_bn_images", type=int, default=0, metavar="N",
                   help="with --ema: at the end of every epoch, recompute the averaged model's BatchNorm statistics "
                        "on N training images (torch's update_bn; 0: keep the average of the raw statistics)")
    return p


def add_threshold_options(p):
    g = p.add_argument_group("decision threshold (tables always keep ACC at 0.5, the paper's metric)")
    g.add_argument("--threshold", default=None,
                   help="threshold for the extra 'ACC@t' columns (predict.py: for the verdicts): a probability, or "
                        "'stored' for the one train.py chose on its validation split; default: the stored one "
                        "when the checkpoint has it (predict.py: 0.5)")
    g.add_argument("--calibrate_real", default=None,
                   help="choose the threshold on this folder of real images instead: the lowest one that calls at "
                        "most --target_fpr of them fake")
    g.add_argument("--target_fpr", type=float, default=0.05, help="false-positive rate for --calibrate_real")
    g.add_argument("--ema", action="store_true", help="evaluate the checkpoint's moving-average weights (train.py --ema)")
    return p


def test_parser():
    p = _new_parser("Evaluate a checkpoint on the benchmark suites and write ACC / AP tables.")
    add_common_options(p)
    add_speed_options(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--model_path", nargs="+", default=None,
                   help="checkpoint(s) to evaluate (NPR.pth or ours); several (e.g. one per seed) add a table of "
                        "mean and standard deviation across them")
    g.add_argument("--no_resize", action="store_true", help="override every suite: do not resize")
    g.add_argument("--no_crop", action="store_true", help="override every suite: do not crop")
    g.add_argument("--eval", action="store_true", help="kept for reference compatibility (always eval mode)")
    g.add_argument("--suites", default="", help="comma-separated suites to run (empty: every suite found)")
    g.add_argument("--results_dir", default="./results", help="where CSV / JSON / Markdown results go")
    g.add_argument("--rebuild", action="store_true", help="rebuild the mini benchmark first")
    g.add_argument("--perturb", default="",
                   help="robustness sweep applied to every test image first, e.g. 'jpeg:95,75,50;blur:1,2;resize:0.5;"
                        "jpeg:75+blur:1' (the clean setting is always included)")
    g.add_argument("--plots", action="store_true", help="write ROC / PR, ACC / AP bar and sweep figures (PNG)")
    add_threshold_options(p)
    return p


def explicit_options(parser, argv):
    """Names of the options the user actually typed (so defaults can be replaced safely)."""
    probe = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "nargs": action.nargs} if action.nargs is not None else {"dest": action.dest}
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                kwargs = {"dest": action.dest, "action": "store_true"}
            probe.add_argument(*action.option_strings, **kwargs)
    ns, _ = probe.parse_known_args(argv)
    return set(vars(ns))


def parse_float_list(text, flag):
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} '{text}': expected numbers separated by commas")


def check_common(opt):
    """Validate the options shared by every script; raise UserError with one readable line."""
    if opt.batch_size < 1:
        raise UserError(f"--batch_size {opt.batch_size}: must be at least 1")
    if opt.loadSize < 2 or opt.cropSize < 2:
        raise UserError("--loadSize and --cropSize must be at least 2 pixels")
    if opt.cropSize > opt.loadSize:
        raise UserError(f"--cropSize {opt.cropSize} is larger than --loadSize {opt.loadSize}; "
                        "the crop is taken from the resized image, so use cropSize <= loadSize")
    for flag in ("blur_prob", "jpg_prob"):
        v = getattr(opt, flag)
        if not 0.0 <= v <= 1.0:
            raise UserError(f"--{flag} {v}: a probability must lie in [0, 1]")
    opt.blur_sig = parse_float_list(opt.blur_sig, "--blur_sig")
    if not 1 <= len(opt.blur_sig) <= 2 or min(opt.blur_sig) < 0:
        raise UserError(f"--blur_sig: one value or 'lo,hi' (non-negative), got {opt.blur_sig}")
    quals = parse_float_list(opt.jpg_qual, "--jpg_qual")
    if not quals or any(q != int(q) or not 1 <= q <= 100 for q in quals):
        raise UserError(f"--jpg_qual '{opt.jpg_qual}': qualities are integers in 1..100")
    quals = [int(q) for q in quals]
    opt.jpg_qual = list(range(quals[0], quals[1] + 1)) if len(quals) == 2 else quals
    opt.jpg_method = [m.strip() for m in str(opt.jpg_method).split(",") if m.strip()]
    if not opt.jpg_method or any(m not in ("cv2", "pil") for m in opt.jpg_method):
        raise UserError(f"--jpg_method: choose from cv2, pil (got {opt.jpg_method})")
    opt.rz_interp = [m.strip() for m in str(opt.rz_interp).split(",") if m.strip()]
    known = ("bilinear", "bicubic", "lanczos", "nearest")
    if not opt.rz_interp or any(m not in known for m in opt.rz_interp):
        raise UserError(f"--rz_interp: choose from {', '.join(known)} (got {opt.rz_interp})")
    opt.classes = [c.strip() for c in opt.classes.split(",") if c.strip()] if isinstance(opt.classes, str) else opt.classes
    if opt.num_threads < 0:
        raise UserError("--num_threads must be >= 0")
    return opt


def check_train(opt):
    check_common(opt)
    if opt.lr <= 0:
        raise UserError(f"--lr {opt.lr}: the learning rate must be positive")
    if opt.exact:
        clash = [f"--{k}" for k in ("amp", "compile", "tf32", "train_channels_last") if getattr(opt, k)]
        if clash:
            raise UserError(f"--exact computes as the reference does; drop {', '.join(clash)}")
        opt.deterministic = True
    if not 0 <= opt.mask_prob <= 1:
        raise UserError(f"--mask_prob {opt.mask_prob}: a probability must lie in [0, 1]")
    opt.mask_ratio = parse_float_list(opt.mask_ratio, "--mask_ratio")
    if not 1 <= len(opt.mask_ratio) <= 2 or not all(0 <= r <= 1 for r in opt.mask_ratio):
        raise UserError(f"--mask_ratio: one value or 'lo,hi' in [0, 1], got {opt.mask_ratio}")
    if opt.mask_patch < 1 or opt.rotate < 0 or opt.color_jitter < 0:
        raise UserError("--mask_patch must be >= 1 and --rotate / --color_jitter >= 0")
    if not 0 <= opt.ema < 1:
        raise UserError(f"--ema {opt.ema}: a decay in [0, 1), e.g. 0.999 (0 turns it off)")
    if opt.ema_bn_images < 0 or (opt.ema_bn_images and not opt.ema):
        raise UserError("--ema_bn_images: a number of images >= 0, and only with --ema")
    if opt.no_resize and opt.cache_dir:
        raise UserError("--cache_dir stores images resized to --loadSize; it cannot be used with --no_resize")
    if opt.niter < 1:
        raise UserError(f"--niter {opt.niter}: train for at least one epoch")
    if opt.delr_freq < 1:
        raise UserError("--delr_freq must be at least 1")
    if not 0 <= opt.beta1 < 1:
        raise UserError(f"--beta1 {opt.beta1}: must lie in [0, 1)")
    for flag in ("save_latest_freq", "loss_freq", "save_epoch_freq"):
        if getattr(opt, flag) < 1:
            raise UserError(f"--{flag} must be at least 1")
    return opt


def check_threshold(opt):
    """``--threshold`` -> None, 'stored' or a probability; one readable line when it is neither."""
    if opt.threshold not in (None, "stored"):
        try:
            opt.threshold = float(opt.threshold)
        except ValueError:
            raise UserError(f"--threshold '{opt.threshold}': a probability in (0, 1) or 'stored'") from None
        if not 0 < opt.threshold < 1:
            raise UserError(f"--threshold {opt.threshold}: a probability in (0, 1) or 'stored'")
    if not 0 <= opt.target_fpr < 1:
        raise UserError(f"--target_fpr {opt.target_fpr}: a rate in [0, 1)")
    if opt.calibrate_real is not None and opt.threshold is not None:
        raise UserError("give either --threshold or --calibrate_real, not both")
    return opt


def check_test(opt):
    check_common(opt)
    check_threshold(opt)
    opt.suites = [s.strip() for s in opt.suites.split(",") if s.strip()] if isinstance(opt.suites, str) else opt.suites
    return opt


def print_options(opt, file=sys.stdout):
    lines = [f"{k:>20}: {v}" for k, v in sorted(vars(opt).items())]
    print("----------------- Options ---------------\n" + "\n".join(lines) +
          "\n----------------- End -------------------", file=file)
