"""Score your own images with an NPR checkpoint.

    python predict.py photos/ 'more/*.jpg' one.png --model_path NPR.pth
    python predict.py img.png --model_path NPR.pth --visualize out/   # image | NPR residual | probability

Pixels are kept as they are by default (NPR reads pixel-level traces); ``--resize`` applies
the reference's resize to loadSize x loadSize first. Writes ``--output`` as CSV and JSON.
Scores come from ``engine.score_files`` (``networks.score_images``), the path of the notebook
API's ``predict_proba`` and of ``demo.py``.
"""
import csv
import glob
import json
import os
import sys

import numpy as np

from data.discovery import IMG_EXTENSIONS, list_images
from data.images import ImageRule
from data.transforms import EvalTransform
from engine import score_files
from metrics import resolve_threshold
from networks import load_detector, prepare_model, score_images
from options import parse_predict_args
from util import UserError, log, run_cli, select_device, set_numerics, setup_logging


def expand_inputs(inputs):
    """Files, folders and glob patterns -> sorted unique image paths."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += list_images(item)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"'{item}' is not a file, a folder or a glob pattern that matches anything")
            paths += [m for m in matches if os.path.isfile(m) and m.lower().endswith(IMG_EXTENSIONS)]
    return list(dict.fromkeys(paths))


def verdict_threshold(args, model, transform, rule):
    """(threshold, where it comes from): --calibrate_real, --threshold <p> / stored, else the
    paper's 0.5 (predict.py does not use a stored threshold unless asked)."""
    def score_reals(folder):
        return np.array([np.nan if s.prob is None else s.prob
                         for s in score_images(model, list_images(folder), transform, rule)])

    stored = model.threshold if args.threshold == "stored" else None
    t, source = resolve_threshold(stored, args.threshold, args.calibrate_real, args.target_fpr, score_reals)
    return (0.5, "the paper's rule") if t is None else (t, source)


def main(argv=None):
    args = parse_predict_args(argv)
    setup_logging()
    paths = expand_inputs(args.inputs)
    if not paths:
        raise UserError("no images found in the given inputs")
    device = select_device(args.gpu_ids)
    set_numerics()  # float32 on CUDA (no TF32), as the reference computed
    model = prepare_model(load_detector(args.model_path, device=device, ema=args.ema_weights), device)
    transform = EvalTransform(args.loadSize, args.loadSize, resize=args.resize, crop=False)
    rule = ImageRule(args.strict_images, args.skip_truncated)
    threshold, source = verdict_threshold(args, model, transform, rule)
    log.info("Verdict: fake when P(fake) > %.4f (%s)", threshold, source)
    if args.visualize:
        os.makedirs(args.visualize, exist_ok=True)
    rows = [{k: r[k] for k in ("path", "prob_fake", "verdict", "truncated")}
            for r in score_files(model, paths, transform, threshold, rule, args.visualize, progress=True)]
    width = max(len(r["path"]) for r in rows)
    print(f"{'path'.ljust(width)}  P(fake)  verdict")
    for r in rows:
        p = "   -   " if r["prob_fake"] is None else f"{r['prob_fake']:.4f} "
        print(f"{r['path'].ljust(width)}  {p}  {r['verdict']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "prob_fake", "verdict", "truncated"])
        w.writeheader()
        w.writerows(rows)
    with open(args.output + ".json", "w") as f:
        json.dump({"model_path": args.model_path, "ema": args.ema_weights, "threshold": threshold,
                   "threshold_source": source, "resize": args.resize, "predictions": rows}, f, indent=1)
    scored = sum(r["prob_fake"] is not None for r in rows)
    print(f"{scored} images scored ({sum(r['truncated'] for r in rows)} of them truncated), "
          f"{len(rows) - scored} skipped (unreadable or too small)")
    print(f"Wrote {args.output}.csv and {args.output}.json" +
          (f"; figures in {args.visualize}" if args.visualize else ""))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
