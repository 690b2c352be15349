"""train.py's options: the reference's ``options/train_options.py`` names and defaults, the
built-in benchmark's recipe and SAFE's recipe as presets, and the options beyond the paper
(all off by default)."""
from networks.operators import DEFAULT_OPERATOR, OPERATORS
from recipe import OPTIMIZERS, SCHEDULES
from util import UserError

from .base_options import (MINI_ROOT, OneLineErrorParser, accept_reference_options, add_data_options,
                           add_device_options, check_sizes, comma_list, decay, interpolations, jpeg_methods,
                           jpeg_qualities, learning_rate, non_negative, non_negative_int, positive_int, probability,
                           rate, ratio_range, sigma_range)

# The NPR-mini recipe, taken when --dataroot is not given (each value can still be overridden):
# sized so that building, training and testing fit in a few minutes on a 2-core CPU.
MINI_RECIPE = {"loadSize": 48, "cropSize": 40, "batch_size": 32, "niter": 6, "lr": 0.0005, "delr_freq": 2}

# SAFE's recipe (Li et al., KDD 2025; Ouxiang-Li/SAFE scripts/train.sh and main_finetune.py):
# AdamW, lr = blr * batch / 256 (32 images on each of 4 GPUs), weight decay on weights only,
# one warm-up epoch then a half cosine to min_lr per step, label smoothing 0.1, 256 px random
# crops without resizing, flip, rotation, colour jitter and patch masking, centre-crop validation.
SAFE_RECIPE = {"optim": "adamw", "blr": 0.01, "weight_decay": 0.01, "lr_schedule": "cosine",
               "warmup_epochs": 1.0, "min_lr": 1e-6, "niter": 20, "label_smoothing": 0.1, "batch_size": 128,
               "no_resize": True, "cropSize": 256, "rotate": 180.0, "color_jitter": 0.5, "mask_prob": 0.5,
               "val_crop_only": True}
# SAFE's recipe on NPR-mini: NPR-mini's sizes, batch and epochs; the mask patch keeps SAFE's
# 16 cells across the crop (16 px of 256 -> 2 px of 40, aligned with the 2 x 2 grid).
MINI_SAFE_RECIPE = {**SAFE_RECIPE, **{k: MINI_RECIPE[k] for k in ("loadSize", "cropSize", "batch_size", "niter")},
                    "mask_patch": 2}
RECIPES = ("paper", "safe")


def train_parser():
    p = OneLineErrorParser("Train the NPR detector (paper recipe: --batch_size 32 --lr 0.0002 --delr_freq 10 "
                           "--niter 50; without --dataroot: the built-in NPR-mini benchmark and its recipe).")
    g = add_data_options(p)
    g.add_argument("--classes", type=comma_list, default="", help="comma-separated category folders to use (empty: all)")
    g.add_argument("--train_split", default="train", help="training split folder under --dataroot")
    g.add_argument("--val_split", default="val", help="validation split folder under --dataroot")
    g.add_argument("--cache_dir", default=None, help="decode the train split once into a uint8 cache here")
    g.add_argument("--rebuild", action="store_true", help="rebuild the mini benchmark before training")

    g = p.add_argument_group("model and recipe")
    g.add_argument("--operator", choices=list(OPERATORS), default=DEFAULT_OPERATOR,
                   help="artifact operator before the network: "
                        + "; ".join(f"{op.name}, {op.help}" for op in OPERATORS.values())
                        + ". Stored in the checkpoint, so the evaluation scripts need no flag")
    g.add_argument("--recipe", choices=RECIPES, default="paper",
                   help="training preset: paper, the reference's defaults; safe, SAFE's recipe (AdamW, lr = blr * "
                        "batch_size / 256, warm-up + cosine, label smoothing, crops without resizing, its "
                        "augmentations, centre-crop validation; docs/npr-family.md). Flags given still win")

    g = p.add_argument_group("experiment")
    g.add_argument("--name", default="experiment_name", help="experiment name (used as given)")
    g.add_argument("--checkpoints_dir", default="./checkpoints", help="where experiments are written")
    g.add_argument("--seed", type=int, default=100, help="random seed (the paper uses 100)")
    g.add_argument("--continue_train", action="store_true", help="resume from the checkpoint --epoch of --name")
    g.add_argument("--epoch", default="latest", help="which checkpoint to resume: latest, best, last or an epoch number")
    g.add_argument("--new_optim", action="store_true", help="with --continue_train: start a fresh optimiser")
    g.add_argument("--loss_freq", type=positive_int, default=400, help="log the loss every loss_freq steps")
    g.add_argument("--save_latest_freq", type=positive_int, default=2000,
                   help="save the latest checkpoint every this many steps")
    g.add_argument("--save_epoch_freq", type=positive_int, default=20,
                   help="keep a copy of the checkpoint every this many epochs")

    g = p.add_argument_group("optimisation")
    g.add_argument("--niter", type=positive_int, default=1000, help="number of epochs")
    g.add_argument("--optim", default="adam", choices=OPTIMIZERS, help="optimiser")
    g.add_argument("--lr", type=learning_rate, default=0.0001, help="initial learning rate")
    g.add_argument("--blr", type=learning_rate, default=None,
                   help="base learning rate: without --lr, lr = blr * batch_size / 256 (SAFE's rule)")
    g.add_argument("--beta1", type=rate, default=0.9, help="Adam beta1")
    g.add_argument("--weight_decay", type=non_negative, default=0.0,
                   help="weight decay of the convolution and linear weights, for every --optim (not of biases and "
                        "BatchNorm, as SAFE's)")
    g.add_argument("--lr_schedule", choices=SCHEDULES, default="step",
                   help="step: the reference's (lr *= 0.9 after every delr_freq epochs); cosine: SAFE's, set every "
                        "step: linear warm-up over --warmup_epochs, then a half cosine down to --min_lr")
    g.add_argument("--delr_freq", type=positive_int, default=20, help="multiply lr by 0.9 after every delr_freq epochs")
    g.add_argument("--warmup_epochs", type=non_negative, default=0.0, help="warm-up epochs of the cosine schedule")
    g.add_argument("--min_lr", type=non_negative, default=1e-6, help="final lr of the cosine schedule")
    g.add_argument("--label_smoothing", type=rate, default=0.0,
                   help="train towards 1 - s/2 and s/2 instead of 1 and 0 (SAFE: 0.1, its two-class label smoothing)")
    g.add_argument("--earlystop_epoch", type=non_negative_int, default=0,
                   help="stop after this many epochs without val-AP improvement; 0 trains all --niter epochs, as the "
                        "reference does (it parses this option but never uses it)")
    g.add_argument("--class_bal", action="store_true", help="sample real and fake images with equal probability")
    g.add_argument("--serial_batches", action="store_true", help="do not shuffle the training data")

    g = p.add_argument_group("augmentation (the reference's)")
    g.add_argument("--no_resize", action="store_true",
                   help="train without resizing: images smaller than cropSize are tiled up, then randomly cropped "
                        "(the authors' GenImage recipe)")
    g.add_argument("--no_flip", action="store_true", help="no random horizontal flip")
    g.add_argument("--rz_interp", type=interpolations, default="bilinear",
                   help="resize interpolation(s), comma list drawn per image: bilinear, bicubic, lanczos, nearest")
    g.add_argument("--blur_prob", type=probability, default=0.0, help="probability of Gaussian blur")
    g.add_argument("--blur_sig", type=sigma_range, default="0.5", help="blur sigma: one value, or 'lo,hi' drawn uniformly")
    g.add_argument("--jpg_prob", type=probability, default=0.0, help="probability of JPEG compression")
    g.add_argument("--jpg_method", type=jpeg_methods, default="cv2",
                   help="JPEG encoder(s), comma list: cv2 or pil (cv2 falls back to pil without OpenCV)")
    g.add_argument("--jpg_qual", type=jpeg_qualities, default="75",
                   help="JPEG quality: one value, 'lo,hi' (every quality in between) or three or more values")

    g = p.add_argument_group("beyond the paper (off by default; a flag given without a value takes the SAFE "
                             "recipe's setting, Li et al. KDD 2025: --no_resize --rotate --color_jitter --mask_prob)")
    g.add_argument("--rotate", type=non_negative, nargs="?", const=180.0, default=0.0, metavar="DEG",
                   help="random rotation by up to +-DEG degrees after the crop and flip (nearest neighbour, black "
                        "corners; torchvision's RandomRotation); alone: 180")
    g.add_argument("--color_jitter", type=non_negative, nargs="?", const=0.5, default=0.0, metavar="J",
                   help="brightness, contrast and saturation factors drawn in [1-J, 1+J], in a random order "
                        "(torchvision's ColorJitter(J, J, J)); alone: 0.5")
    g.add_argument("--mask_prob", type=probability, nargs="?", const=0.5, default=0.0, metavar="P",
                   help="probability of random patch masking: distinct cells of a --mask_patch grid blacked out, "
                        "--mask_ratio of the crop; alone: 0.5")
    g.add_argument("--mask_ratio", type=ratio_range, default="0,0.75",
                   help="part of the crop masked: one value or 'lo,hi' drawn uniformly")
    g.add_argument("--mask_patch", type=positive_int, default=16, help="masked patch size in pixels")
    g.add_argument("--val_crop_only", action="store_true",
                   help="validate on a centre crop of cropSize without resizing (SAFE's; the reference resizes to "
                        "loadSize first)")
    g.add_argument("--ema", type=decay, nargs="?", const=0.999, default=0.0, metavar="DECAY",
                   help="also keep an exponential moving average of the weights and BatchNorm statistics "
                        "(torch.optim.swa_utils.AveragedModel), updated after every step, saved as 'model_ema' and "
                        "resumed; evaluate it with --ema_weights. Alone: 0.999, for runs of many thousand steps "
                        "(docs/beyond-the-paper.md for short runs)")
    g.add_argument("--ema_bn_images", type=non_negative_int, default=0, metavar="N",
                   help="with --ema: at the end of every epoch, recompute the averaged model's BatchNorm statistics "
                        "on N training images (torch's update_bn; 0: keep the average of the raw statistics)")

    add_device_options(p, training=True)
    return accept_reference_options(p)


def parse_train_args(argv=None):
    """train.py's arguments, checked. Without --dataroot the NPR-mini preset (``MINI_RECIPE``,
    --name npr-mini) replaces the defaults, and ``args.mini`` is True; ``--recipe safe`` replaces
    them with ``SAFE_RECIPE`` (``MINI_SAFE_RECIPE`` on NPR-mini). Flags given always win."""
    parser = train_parser()
    args = parser.parse_args(argv)
    mini = args.dataroot is None
    preset = {}
    if mini:
        preset.update(dataroot=MINI_ROOT, name="npr-mini", **MINI_RECIPE)
    if args.recipe == "safe":
        preset.update(MINI_SAFE_RECIPE if mini else SAFE_RECIPE)
    default_lr = preset.get("lr", parser.get_default("lr"))
    # lr=None tells whether --lr was given: without it, --blr (SAFE's rule) sets the lr.
    parser.set_defaults(**{**preset, "lr": None})
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = args.blr * args.batch_size / 256 if args.blr is not None else default_lr
    args.mini = mini
    check_sizes(args)
    if args.exact:
        clash = [f"--{k}" for k in ("amp", "compile", "tf32", "train_channels_last") if getattr(args, k)]
        if clash:
            raise UserError(f"--exact computes as the reference does; drop {', '.join(clash)}")
    if args.lr_schedule == "cosine" and args.warmup_epochs >= args.niter:
        raise UserError(f"--warmup_epochs {args.warmup_epochs:g} leaves no epoch of the {args.niter} (--niter) for "
                        "the cosine decay; use fewer warm-up epochs")
    if args.ema_bn_images and not args.ema:
        raise UserError("--ema_bn_images recomputes the BatchNorm statistics of the --ema weights; give --ema too")
    if args.no_resize and args.cache_dir:
        raise UserError("--cache_dir stores images resized to --loadSize; it cannot be used with --no_resize")
    return args
