"""Validate one checkpoint on one dataset folder (0_real / 1_fake, optionally in category folders).

    python validate.py --dataroot path/to/folder --model_path NPR.pth
"""
import math
import sys
import time

from data.transforms import EvalTransform
from engine import eval_config, eval_threshold, evaluate_folder
from metrics import METRIC_KEYS, metrics_at
from networks import load_for_evaluation
from options import parse_validate_args
from devices import keep_freed_memory, select_device, set_numerics
from util import run_cli, setup_logging


def main(argv=None):
    args = parse_validate_args(argv)
    keep_freed_memory()  # glibc keeps freed memory for the next batch (docs/speed.md)
    setup_logging()
    set_numerics(tf32=args.tf32)
    device = select_device(args.gpu_ids)
    cfg = eval_config(args, device)
    model, stored, _ = load_for_evaluation(args.model_path, device, args.ema_weights, channels_last=cfg.channels_last,
                                           fold_bn=not args.no_fold_bn, compile_model=args.compile)
    transform = EvalTransform(args.loadSize, args.cropSize, resize=not args.no_resize, crop=not args.no_crop)
    threshold, source, is_paper_rule = eval_threshold(model, stored, transform, cfg, args.threshold,
                                                      args.calibrate_real, args.target_fpr)
    start = time.time()
    m = evaluate_folder(model, args.dataroot, transform, cfg, classes=args.classes)
    print(f"{args.dataroot}: {m['n_scored']} images scored ({m['n_truncated']} of them truncated), "
          f"{m['n_skipped']} skipped, {time.time() - start:.1f}s")
    for k in METRIC_KEYS:
        print(f"{k:>9}: {'nan' if math.isnan(m[k]) else f'{100 * m[k]:.2f}'}")
    print(f"best_threshold: {m['best_threshold']:.4f}  n_real: {m['n_real']}  n_fake: {m['n_fake']}")
    if not is_paper_rule:  # the paper's 0.5 is the acc line already
        mt = metrics_at(m, threshold)
        print(f"threshold {threshold:.4f} ({source}): acc {mt['acc_t']:.2f}  r_acc {mt['r_acc_t']:.2f}  "
              f"f_acc {mt['f_acc_t']:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
