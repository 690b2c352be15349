"""Validate a checkpoint on one dataset folder; the metrics every other script reports.

    python validate.py --dataroot path/to/folder --model_path NPR.pth
"""
import copy
import logging
import math
import os
import sys
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

from data.datasets import make_eval_loader, opt_workers
from data.discovery import make_samples
from data.transforms import EvalTransform, normalize_batch
from util import AMP_DTYPE, UserError, run_cli, select_device, set_numerics, setup_logging

log = logging.getLogger("npr")


def compute_metrics(y_true, y_prob, threshold=0.5):
    """ACC / AP / real ACC / fake ACC / ROC-AUC / best-threshold ACC and counts, as a dict.

    ACC counts ``prob > threshold`` as fake (the reference's rule). Metrics undefined for a
    one-class set (AP without fakes, AUC) are NaN.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_prob = np.asarray(y_prob, dtype=np.float64).ravel()
    pred = y_prob > threshold
    real, fake = y_true == 0, y_true == 1
    nan = float("nan")
    out = {
        "acc": accuracy_score(y_true, pred) if len(y_true) else nan,
        "ap": average_precision_score(y_true, y_prob) if fake.any() else nan,
        "r_acc": accuracy_score(y_true[real], pred[real]) if real.any() else nan,
        "f_acc": accuracy_score(y_true[fake], pred[fake]) if fake.any() else nan,
        "auc": roc_auc_score(y_true, y_prob) if real.any() and fake.any() else nan,
        "best_acc": nan, "best_threshold": nan, "balanced_threshold": None,
        "n_real": int(real.sum()), "n_fake": int(fake.sum()),
    }
    if real.any() and fake.any():
        # Accuracy at every distinct threshold of the ROC curve; keep the best.
        fpr, tpr, thr = roc_curve(y_true, y_prob)
        accs = (tpr * fake.sum() + (1 - fpr) * real.sum()) / len(y_true)
        best = int(np.argmax(accs))
        out["best_acc"], out["best_threshold"] = float(accs[best]), float(min(thr[best], 1.0))
        out["balanced_threshold"] = threshold_below(thr[int(np.argmax(tpr - fpr))], y_prob)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


def threshold_below(roc_threshold, y_prob):
    """A threshold for the rule ``prob > t`` that calls fake exactly the scores that
    ``roc_curve``'s ``score >= roc_threshold`` does: halfway to the next lower score."""
    if not np.isfinite(roc_threshold) or roc_threshold > 1.0:
        return 1.0
    lower = y_prob[y_prob < roc_threshold]
    return float((roc_threshold + lower.max()) / 2) if len(lower) else float(roc_threshold / 2)


def balanced_threshold(y_true, y_prob):
    """The decision threshold with the best balanced accuracy ((real ACC + fake ACC) / 2, i.e.
    the largest TPR - FPR on the ROC curve) on a labelled set, for the rule ``prob > t``;
    train.py stores it as the checkpoint's threshold. None for a one-class set."""
    return compute_metrics(y_true, y_prob)["balanced_threshold"]


def threshold_at_fpr(real_probs, target_fpr):
    """The lowest threshold ``t`` such that at most ``target_fpr`` of ``real_probs`` are ``> t``
    (calibration on real images only: a target false-positive rate)."""
    probs = np.sort(np.asarray(real_probs, dtype=np.float64).ravel())[::-1]
    if not len(probs):
        raise UserError("no real image could be scored for the calibration")
    return float(probs[min(int(np.floor(target_fpr * len(probs))), len(probs) - 1)])


def resolve_threshold(opt, stored, score_reals):
    """(threshold or None, where it comes from) for the extra ACC@t columns / the verdicts:
    ``--calibrate_real`` > ``--threshold <p>`` > the checkpoint's ``stored`` one (``--threshold
    stored``, or by default when there is one). ``score_reals(folder)`` gives the fake-probabilities
    of a folder's images (NaN for those that cannot be used), for the calibration."""
    if opt.calibrate_real is not None:
        if not os.path.isdir(opt.calibrate_real):
            raise UserError(f"--calibrate_real '{opt.calibrate_real}' is not a folder")
        probs = np.asarray(score_reals(opt.calibrate_real), dtype=np.float64)
        probs = probs[~np.isnan(probs)]
        t = threshold_at_fpr(probs, opt.target_fpr)
        return t, (f"calibrated on {len(probs)} real images in {opt.calibrate_real} for a false-positive rate of "
                   f"{opt.target_fpr:g}")
    if isinstance(opt.threshold, float):
        return opt.threshold, "given with --threshold"
    if opt.threshold == "stored" and stored is None:
        raise UserError("--threshold stored: the checkpoint holds no threshold (train.py stores one in its "
                        "checkpoints); give a number or --calibrate_real")
    if stored is not None:
        return float(stored), "stored by train.py: best balanced accuracy on its validation split"
    return None, "none"


def eval_threshold(opt, model, device):
    """``resolve_threshold`` for test.py / validate.py: calibration images go through the
    evaluation transform and loader of ``opt``."""
    def score_reals(folder):
        from data.discovery import list_images
        samples = [(p, 0) for p in list_images(folder)]
        if not samples:
            raise UserError(f"--calibrate_real '{folder}' holds no images")
        transform = EvalTransform(opt.loadSize, opt.cropSize, resize=not opt.no_resize, crop=not opt.no_crop)
        loader = make_eval_loader(samples, transform, opt.batch_size, num_workers=opt_workers(opt, device),
                                  device=device, skip_truncated=opt.skip_truncated)
        return predict_loader(model, loader, device, channels_last=not opt.no_channels_last)[1]

    return resolve_threshold(opt, getattr(model, "threshold", None), score_reals)


def prepare_model(model, device, channels_last=True, fold_bn=True, compile_model=False):
    """The model as evaluation runs it: on ``device``, eval mode, and the fast paths that keep
    the predictions (BatchNorm folded into the convolutions, channels-last); ``torch.compile``
    only when asked. Returns a new module when folding; ``model`` itself is not changed.
    """
    from networks.fuse import fuse_for_inference

    model = model.to(device).eval()
    if fold_bn:
        model = fuse_for_inference(model)
    elif channels_last:
        model = copy.deepcopy(model)  # Module.to(memory_format) works in place; leave the caller's model as it is
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    return model


@torch.inference_mode()
def predict_loader(model, loader, device, amp=False, channels_last=True, progress=None):
    """Run ``model`` over ``loader``; returns (labels, probabilities, skipped indices, truncated
    indices) in loader order."""
    labels, probs, skipped, truncated = [], [], [], []
    use_amp = amp and device.type == "cuda"
    for batch in loader:
        skipped += list(batch.skipped)
        truncated += list(batch.truncated)
        if len(batch.labels):
            x = batch.images.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=use_amp):
                logits = model(normalize_batch(x))
            probs.append(torch.sigmoid(logits.float()).flatten().cpu())
            labels.append(batch.labels)
        if progress is not None:
            progress.update(len(batch.labels) + len(batch.skipped))
    if not probs:
        return np.zeros(0), np.zeros(0), skipped, truncated
    return torch.cat(labels).numpy(), torch.cat(probs).numpy(), skipped, truncated


def evaluate_folder(model, root, device, batch_size=64, load_size=256, crop_size=224, resize=True, crop=True,
                    num_workers=0, classes=None, amp=False, channels_last=True, strict=False, progress=None,
                    perturb=None, skip_truncated=False):
    """Metrics (``compute_metrics``) of ``model`` on the dataset folder ``root``, plus counts of
    images scored, skipped (unreadable or too small) and truncated (scored, as the reference does)."""
    samples = make_samples(root, classes)
    transform = EvalTransform(load_size, crop_size, resize=resize, crop=crop, perturb=perturb)
    loader = make_eval_loader(samples, transform, batch_size, num_workers=num_workers, device=device, strict=strict,
                              skip_truncated=skip_truncated)
    y_true, y_prob, skipped, truncated = predict_loader(model, loader, device, amp=amp, channels_last=channels_last,
                                                        progress=progress)
    metrics = compute_metrics(y_true, y_prob)
    metrics.update(n_images=len(samples), n_scored=int(len(y_true)), n_skipped=len(skipped),
                   n_truncated=len(truncated))
    metrics["y_true"], metrics["y_prob"] = y_true, y_prob
    return metrics


METRIC_KEYS = ("acc", "ap", "r_acc", "f_acc", "auc", "best_acc")
THRESHOLD_KEYS = ("acc_t", "r_acc_t", "f_acc_t")  # ACC / real ACC / fake ACC at the chosen threshold
TABLE_COLUMNS = [("generator", "generator"), ("acc", "ACC"), ("ap", "AP"), ("r_acc", "real ACC"),
                 ("f_acc", "fake ACC"), ("acc_t", "ACC@t"), ("r_acc_t", "real@t"), ("f_acc_t", "fake@t"),
                 ("paper_acc", "paper ACC"), ("paper_ap", "paper AP"),
                 ("n_scored", "scored"), ("n_skipped", "skipped"), ("n_truncated", "truncated")]


def shown_columns(rows, columns, key="acc_t"):
    """``columns`` without the ACC@t ones when no row has a threshold (no ``key`` value)."""
    if any(r.get(key) is not None for r in rows):
        return columns
    return [c for c in columns if c[0] not in THRESHOLD_KEYS]


def metrics_at(m, threshold):
    """ACC / real ACC / fake ACC (%) at ``threshold`` of an ``evaluate_folder`` result, keyed
    as THRESHOLD_KEYS."""
    mt = compute_metrics(m["y_true"], m["y_prob"], threshold)
    return {"acc_t": 100.0 * mt["acc"], "r_acc_t": 100.0 * mt["r_acc"], "f_acc_t": 100.0 * mt["f_acc"]}


def evaluate_suite(model, suite, suite_dir, device, opt, progress=True, perturb=None, threshold=None):
    """Evaluate every generator of ``suite`` found under ``suite_dir``.

    Returns ``(rows, missing)``: one dict per generator (metrics in %, the paper's numbers,
    image counts; with a ``threshold``, also ACC / real ACC / fake ACC at it) and the names of
    generators whose folder is absent (skipped, not fatal).
    """
    from data.benchmarks import locate_generator
    from tqdm import tqdm

    rows, missing = [], []
    for gen in suite.generators:
        path = locate_generator(suite_dir, gen)
        if path is None:
            missing.append(gen.name)
            continue
        start = time.time()
        bar = tqdm(desc=f"{suite.name}/{gen.name}", unit="img", leave=False, disable=None if progress else True)
        m = evaluate_folder(model, path, device, opt.batch_size, opt.loadSize, opt.cropSize,
                            resize=suite.resize and not opt.no_resize, crop=suite.crop and not opt.no_crop,
                            num_workers=opt_workers(opt, device), amp=getattr(opt, "amp", False),
                            channels_last=not getattr(opt, "no_channels_last", False),
                            strict=opt.strict_images, progress=bar, perturb=perturb,
                            skip_truncated=getattr(opt, "skip_truncated", False))
        bar.close()
        row = {"suite": suite.name, "generator": gen.name, "folder": path, "in_mean": gen.in_mean,
               "perturbation": perturb.name if perturb is not None else "none",
               "steps": perturb.steps if perturb is not None else ()}
        row.update({k: 100.0 * m[k] for k in METRIC_KEYS})
        if threshold is not None:
            row.update(metrics_at(m, threshold), threshold=threshold)
        row.update({k: m[k] for k in ("best_threshold", "n_real", "n_fake", "n_images", "n_scored", "n_skipped",
                                      "n_truncated")})
        row.update(paper_acc=gen.paper_acc, paper_ap=gen.paper_ap, seconds=round(time.time() - start, 2))
        row["y_true"], row["y_prob"] = m["y_true"], m["y_prob"]
        rows.append(row)
    return rows, missing


def mean_row(rows, suite_name):
    """The suite's Mean row: averages over its generators, as the paper's tables, leaving out
    those marked ``in_mean=False`` (GenImage's training generator); counts are totals."""
    out = {"suite": suite_name, "generator": "Mean", "perturbation": rows[0].get("perturbation", "none") if rows else "none"}
    averaged = [r for r in rows if r.get("in_mean", True)]
    for k in METRIC_KEYS + THRESHOLD_KEYS + ("paper_acc", "paper_ap"):
        vals = [r[k] for r in averaged if r.get(k) is not None and not math.isnan(r[k])]
        # A paper mean is only shown when the paper has every generator we report.
        if k.startswith("paper") and len(vals) != len(averaged):
            vals = []
        out[k] = float(np.mean(vals)) if vals else None
    for k in ("n_scored", "n_skipped", "n_truncated"):
        out[k] = sum(r.get(k, 0) for r in rows)
    return out


SUMMARY_METRICS = METRIC_KEYS + THRESHOLD_KEYS


def summarize_checkpoints(rows):
    """Mean and sample standard deviation (ddof=1) of each metric across checkpoints, per
    (perturbation, suite, generator) -- the Mean rows included, so that the suite mean is
    averaged over checkpoints too. ``rows`` carry ``model_path``; returns one dict per group."""
    out = {}
    for r in rows:
        key = (r.get("perturbation", "none"), r["suite"], r["generator"])
        out.setdefault(key, []).append(r)
    summary = []
    for (pert, suite, gen), group in out.items():
        s = {"suite": suite, "generator": gen, "perturbation": pert, "n_checkpoints": len(group),
             "paper_acc": group[0].get("paper_acc"), "paper_ap": group[0].get("paper_ap")}
        for k in SUMMARY_METRICS:
            vals = np.array([r[k] for r in group if r.get(k) is not None and not math.isnan(r[k])], dtype=np.float64)
            s[f"{k}_mean"] = float(vals.mean()) if len(vals) else None
            s[f"{k}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else None
        summary.append(s)
    return summary


def suite_table(rows, suite_name):
    from util import format_table
    return format_table(rows + [mean_row(rows, suite_name)], shown_columns(rows, TABLE_COLUMNS))


def main(argv=None):
    from options import check_test, explicit_options, test_parser
    from networks import load_detector

    parser = test_parser()
    parser.description = "Validate a checkpoint on one dataset folder (0_real/1_fake, optionally in categories)."
    opt = check_test(parser.parse_args(argv))
    opt.auto_workers = "num_threads" not in explicit_options(parser, argv)
    setup_logging()
    if opt.dataroot is None:
        raise UserError("--dataroot is required: the folder to validate")
    if opt.model_path is None or len(opt.model_path) != 1:
        raise UserError("--model_path: give one checkpoint to validate (test.py takes several)")
    opt.model_path = opt.model_path[0]
    set_numerics(tf32=opt.tf32)
    device = select_device(opt.gpu_ids)
    model = prepare_model(load_detector(opt.model_path, device=device, ema=opt.ema), device, not opt.no_channels_last,
                          fold_bn=not opt.no_fold_bn, compile_model=opt.compile)
    threshold, source = eval_threshold(opt, model, device)
    start = time.time()
    m = evaluate_folder(model, opt.dataroot, device, opt.batch_size, opt.loadSize, opt.cropSize,
                        resize=not opt.no_resize, crop=not opt.no_crop, classes=opt.classes,
                        num_workers=opt_workers(opt, device), amp=opt.amp,
                        channels_last=not opt.no_channels_last, strict=opt.strict_images,
                        skip_truncated=opt.skip_truncated)
    print(f"{opt.dataroot}: {m['n_scored']} images scored ({m['n_truncated']} of them truncated), "
          f"{m['n_skipped']} skipped, {time.time() - start:.1f}s")
    for k in ("acc", "ap", "r_acc", "f_acc", "auc", "best_acc"):
        v = m[k]
        print(f"{k:>9}: {'nan' if math.isnan(v) else f'{100 * v:.2f}'}")
    print(f"best_threshold: {m['best_threshold']:.4f}  n_real: {m['n_real']}  n_fake: {m['n_fake']}")
    if threshold is not None:
        mt = metrics_at(m, threshold)
        print(f"threshold {threshold:.4f} ({source}): acc {mt['acc_t']:.2f}  r_acc {mt['r_acc_t']:.2f}  "
              f"f_acc {mt['f_acc_t']:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
