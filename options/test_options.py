"""Options of the evaluation scripts: test.py (benchmark suites), validate.py (one folder) and
predict.py (your own images). The reference's ``options/test_options.py`` names where it has them."""
import os
import sys

from bootstrap import RESAMPLES, SEED
from networks.checkpoint import require_checkpoint
from scores import NAME as SCORES_NAME

from util import UserError

from .base_options import (MINI_ROOT, OneLineErrorParser, accept_reference_options, add_data_options,
                           add_device_options, add_image_options, add_threshold_options, check_sizes, comma_list,
                           gpu_ids, non_negative_int, output_stem, positive_int, shard, size)
from .train_options import MINI_RECIPE

MINI_CHECKPOINT = "checkpoints/npr-mini/model_epoch_last.pth"


def eval_parser(description, dataroot_help=None):
    """(parser, its data group) with what test.py and validate.py share."""
    p = OneLineErrorParser(description)
    g = add_data_options(p, dataroot_help)
    g.add_argument("--no_resize", action="store_true", help="do not resize (test.py: overrides every suite)")
    g.add_argument("--no_crop", action="store_true", help="do not crop (test.py: overrides every suite)")
    return p, g


def test_parser():
    p, g = eval_parser("Evaluate checkpoints on the benchmark suites and write per-generator ACC / AP tables "
                       "(without --dataroot: the built-in NPR-mini benchmark and its checkpoint).")
    g.add_argument("--suites", type=comma_list, default="", help="comma-separated suites to run (empty: every suite found)")
    g.add_argument("--center_crop", action="store_true",
                   help="centre crop every suite to --cropSize (SAFE's evaluation: --no_resize --center_crop "
                        "--cropSize 256)")
    g.add_argument("--rebuild", action="store_true", help="rebuild the mini benchmark first")
    g = p.add_argument_group("evaluation")
    g.add_argument("--model_path", nargs="+", default=None,
                   help="checkpoint(s) to evaluate (NPR.pth or ours); several (e.g. one per seed) add a table of "
                        "mean and standard deviation across them")
    g.add_argument("--perturb", default="",
                   help="robustness sweep applied to every test image first, e.g. 'jpeg:95,75,50;blur:1,2;resize:0.5;"
                        "jpeg:75+blur:1' (the clean setting is always included)")
    g.add_argument("--results_dir", default="./results", help="where CSV / JSON / Markdown results go")
    g.add_argument("--plots", action="store_true", help="write ROC / PR, ACC / AP bar and sweep figures (PNG)")
    g.add_argument("--check_data", action="store_true",
                   help="first check the suites (python -m tools.verify): counts against the published ones, broken "
                        "and duplicate files, format bias between real and fake; writes data_check.json")
    g = p.add_argument_group("uncertainty")
    g.add_argument("--bootstrap", type=non_negative_int, default=RESAMPLES,
                   help="replicates of the bootstrap over images behind every table's 95%% intervals and the "
                        "comparisons (0: no intervals)")
    g.add_argument("--bootstrap_seed", type=non_negative_int, default=SEED, help="seed of those replicates")
    g.add_argument("--compare", nargs="+", default=None, metavar="A B",
                   help="compare two detectors on the same images, per generator: B - A in AP and ACC with 95%% "
                        "intervals, p-values and Holm's correction; each is a checkpoint (evaluated here) or a "
                        f"{SCORES_NAME} a test.py run wrote; 'A1 A2 A3 -- B1 B2 B3' compares two groups of seeds")
    add_threshold_options(p, "the extra ACC@t columns", "auto")
    add_device_options(p)
    return accept_reference_options(p)


def compare_groups(argv):
    """(argv without what follows --compare, the two groups it names): ``--compare A B`` or
    ``--compare A1 A2 -- B1 B2`` (argparse would take everything after "--" for positionals)."""
    argv = list(argv)
    if "--compare" not in argv:
        return argv, None
    at = argv.index("--compare")
    end = next((i for i in range(at + 1, len(argv)) if argv[i].startswith("--") and argv[i] != "--"), len(argv))
    items, rest = argv[at + 1:end], argv[:at] + argv[end:]
    if "--" in items:
        cut = items.index("--")
        groups = (items[:cut], items[cut + 1:])
    elif len(items) == 2:
        groups = ([items[0]], [items[1]])
    else:
        raise UserError(f"--compare takes two detectors (A B), or two groups of seeds (A1 A2 -- B1 B2); got "
                        f"{len(items)} item(s) without '--'")
    if not (groups[0] and groups[1]):
        raise UserError("--compare: each side of '--' needs at least one checkpoint or scores file")
    absent = [x for x in groups[0] + groups[1] if not os.path.isfile(x)]
    if absent:
        raise UserError(f"--compare: no checkpoint or scores file at {', '.join(absent)}")
    return rest, groups


def parse_test_args(argv=None):
    """test.py's arguments. Without --dataroot: NPR-mini's folder, sizes, suite, results folder
    and, without --model_path, the main job's checkpoint (``args.mini`` is True). ``--compare``
    gives ``args.compare``, its two groups; their checkpoints are ``args.model_path``."""
    parser = test_parser()
    argv, groups = compare_groups(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    mini = args.dataroot is None
    if mini:
        parser.set_defaults(dataroot=os.path.dirname(MINI_ROOT), loadSize=MINI_RECIPE["loadSize"],
                            cropSize=MINI_RECIPE["cropSize"], suites=("NPR-mini",),
                            results_dir=os.path.join("results", "npr-mini"),
                            model_path=[MINI_CHECKPOINT] if groups is None else None)
        args = parser.parse_args(argv)
        if args.model_path == [MINI_CHECKPOINT]:
            require_checkpoint(MINI_CHECKPOINT, "no --model_path given", "run `python train.py` first, or pass --model_path")
    if groups is not None:
        if args.model_path:
            raise UserError("--compare names the detectors to compare; drop --model_path")
        args.model_path = list(dict.fromkeys(x for x in groups[0] + groups[1] if not x.endswith(SCORES_NAME)))
    args.mini, args.compare = mini, groups
    if args.model_path is None:
        raise UserError("--model_path is required: the checkpoint to evaluate (e.g. NPR.pth)")
    for path in args.model_path:
        require_checkpoint(path, "--model_path")
    check_sizes(args)
    if args.center_crop and args.no_crop:
        raise UserError("--center_crop and --no_crop contradict each other; give one")
    return args


def validate_parser():
    p, g = eval_parser("Validate one checkpoint on one dataset folder (0_real / 1_fake, optionally in category "
                       "folders).", dataroot_help="the folder to validate (required)")
    g.add_argument("--classes", type=comma_list, default="", help="comma-separated category folders to use (empty: all)")
    p.add_argument_group("evaluation").add_argument("--model_path", default=None, help="the checkpoint")
    add_threshold_options(p, "the extra line of ACC at it", "auto")
    add_device_options(p)
    return accept_reference_options(p)


def parse_validate_args(argv=None):
    args = validate_parser().parse_args(argv)
    if args.dataroot is None:
        raise UserError("--dataroot is required: the folder to validate")
    if args.model_path is None:
        raise UserError("--model_path is required: the checkpoint to validate")
    check_sizes(args)
    return args


def predict_parser():
    p = OneLineErrorParser("Score image files, folders and glob patterns with an NPR checkpoint.")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--model_path", default=MINI_CHECKPOINT, help="checkpoint")
    p.add_argument("--resize", action="store_true", help="resize to --loadSize first (the reference's test-time resize)")
    p.add_argument("--loadSize", type=size, default=256, help="size for --resize")
    p.add_argument("--output", type=output_stem, default="results/predictions",
                   help="writes <output>.csv, <output>.jsonl and <output>.json (and holds <output>.lock while it "
                        "runs); a folder (out/, or one that exists) gets predictions.* inside it")
    p.add_argument("--visualize", default=None, help="folder for one PNG per image: image, the operator's artifact map "
                   "(NPR's residual, or SAFE's wavelet sub-band), probability")
    p.add_argument("--gpu_ids", type=gpu_ids, default="0", help="CUDA device id; -1 for the CPU")
    p.add_argument("--batch_size", type=positive_int, default=32, help="images per batch (equal sizes are batched)")
    p.add_argument("--num_threads", type=non_negative_int, default=None,
                   help="data-loading worker processes (default: chosen for the device, as test.py)")
    p.add_argument("--shard", type=shard, default=None,
                   help="k/n: score only the k-th of n equal, contiguous parts of the inputs (k from 1), into "
                        "<output>.shard<k>of<n>.*; the last shard to finish merges them into <output>.* (under "
                        "torchrun each process takes its own shard)")
    p.add_argument("--overwrite", action="store_true",
                   help="score everything again; by default a run with the same inputs and settings resumes where "
                        "the files at --output stop")
    p.add_argument("--list", action="store_true",
                   help="print every row (by default only when there are at most 50)")
    add_image_options(p)
    add_threshold_options(p, "the verdicts", "paper")
    return p


def parse_predict_args(argv=None):
    return predict_parser().parse_args(argv)
