"""Score your own images with an NPR checkpoint.

    python predict.py photos/ 'more/*.jpg' one.png --model_path NPR.pth
    python predict.py img.png --model_path NPR.pth --visualize out/   # image | NPR residual | probability

Pixels are kept as they are by default (NPR reads pixel-level traces); ``--resize`` applies
the reference's resize to loadSize x loadSize first. Writes ``--output`` as CSV and JSON.
"""
import argparse
import csv
import glob
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from data.discovery import IMG_EXTENSIONS, list_images
from data.transforms import EvalTransform, ImageDecodeError, ImageTooSmallError, load_for_model, normalize_batch
from networks import load_detector, npr_residual, predict_proba
from options import OneLineErrorParser, add_threshold_options, check_threshold
from util import UserError, log, run_cli, select_device, set_numerics, setup_logging
from validate import prepare_model, resolve_threshold


def get_args_parser():
    p = OneLineErrorParser(description="Score image files, folders and glob patterns with an NPR checkpoint.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--model_path", default="checkpoints/npr-mini/model_epoch_last.pth", help="checkpoint")
    p.add_argument("--resize", action="store_true", help="resize to --loadSize first (the reference's test-time resize)")
    p.add_argument("--loadSize", type=int, default=256, help="size for --resize")
    p.add_argument("--output", default="results/predictions", help="writes <output>.csv and <output>.json")
    p.add_argument("--visualize", default=None, help="folder for one PNG per image: image, NPR residual, probability")
    p.add_argument("--gpu_ids", default="0", help="CUDA device id; -1 for the CPU")
    p.add_argument("--strict_images", action="store_true",
                   help="stop on the first unreadable or too small (< 2 px) image instead of skipping it")
    p.add_argument("--skip_truncated", action="store_true",
                   help="skip truncated files instead of scoring them as far as they decode (the reference's way)")
    add_threshold_options(p)
    return p


def verdict_threshold(args, model, transform):
    """(threshold, where it comes from): --calibrate_real, --threshold <p> / stored, else the
    paper's 0.5 (predict.py does not use a stored threshold unless asked)."""
    stored = getattr(model, "threshold", None) if args.threshold == "stored" else None
    t, source = resolve_threshold(args, stored,
                                  lambda folder: predict_proba(model, expand_inputs([folder]), transform).numpy())
    return (0.5, "the paper's rule") if t is None else (t, source)


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


def residual_figure(img, residual, prob, threshold, path):
    """image | |NPR| per channel (amplified) | |NPR| magnitude, titled with the probability."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = residual[0].permute(1, 2, 0).numpy()
    mag = np.abs(r).mean(axis=2)
    scale = np.percentile(np.abs(r), 99) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    axes[0].imshow(img)
    axes[0].set_title("image")
    axes[1].imshow(np.clip(0.5 + r / (2 * scale), 0, 1))
    axes[1].set_title("NPR residual per channel (amplified)")
    axes[2].imshow(mag, cmap="magma", vmin=0, vmax=np.percentile(mag, 99) or 1.0)
    axes[2].set_title("NPR magnitude")
    for ax in axes:
        ax.axis("off")
    verdict = "fake" if prob > threshold else "real"
    fig.suptitle(f"{os.path.basename(path)}: P(fake) = {prob:.3f} -> {verdict}")
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # leave room for the title
    return fig


def main(argv=None):
    args = check_threshold(get_args_parser().parse_args(argv))
    setup_logging()
    paths = expand_inputs(args.inputs)
    if not paths:
        raise UserError("no images found in the given inputs")
    device = select_device(args.gpu_ids)
    set_numerics()  # float32 on CUDA (no TF32), as the reference computed
    model = prepare_model(load_detector(args.model_path, device=device, ema=args.ema), device)
    transform = EvalTransform(args.loadSize, args.loadSize, resize=args.resize, crop=False)
    threshold, source = verdict_threshold(args, model, transform)
    log.info("Verdict: fake when P(fake) > %.4f (%s)", threshold, source)
    if args.visualize:
        os.makedirs(args.visualize, exist_ok=True)
    rows = []
    for i, path in enumerate(tqdm(paths, desc="scoring", unit="img", disable=None)):
        try:
            pixels, truncated = load_for_model(path, transform, allow_truncated=not args.skip_truncated)
        except ImageDecodeError as e:
            if args.strict_images:
                raise UserError(f"cannot use image '{path}' ({e}); remove it or drop --strict_images")
            log.warning("skipping image %s (%s)", path, e)
            verdict = "too small" if isinstance(e, ImageTooSmallError) else "unreadable"
            rows.append({"path": path, "prob_fake": None, "verdict": verdict, "truncated": False})
            continue
        if truncated:
            log.warning("image %s is truncated: scored as far as it decodes (--skip_truncated skips it)", path)
        x = normalize_batch(pixels.unsqueeze(0)).to(device)
        with torch.inference_mode():
            prob = torch.sigmoid(model(x)).item()
        rows.append({"path": path, "prob_fake": prob, "verdict": "fake" if prob > threshold else "real",
                     "truncated": truncated})
        if args.visualize:
            import matplotlib.pyplot as plt
            shown = pixels.permute(1, 2, 0).numpy()
            fig = residual_figure(shown, npr_residual(x.cpu()), prob, threshold, path)
            # numbered, since files in different folders often share a name
            out = os.path.join(args.visualize, f"{i:04d}_{os.path.splitext(os.path.basename(path))[0]}_npr.png")
            fig.savefig(out, dpi=100)
            plt.close(fig)
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
        json.dump({"model_path": args.model_path, "ema": args.ema, "threshold": threshold, "threshold_source": source,
                   "resize": args.resize,
                   "predictions": rows}, f, indent=1)
    scored = sum(r["prob_fake"] is not None for r in rows)
    print(f"{scored} images scored ({sum(r['truncated'] for r in rows)} of them truncated), "
          f"{len(rows) - scored} skipped (unreadable or too small)")
    print(f"Wrote {args.output}.csv and {args.output}.json" +
          (f"; figures in {args.visualize}" if args.visualize else ""))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
