"""Metrics and decision thresholds: one function returns a dict, every table and file reads it.

ACC counts ``prob > threshold`` as fake, the reference's rule, at the paper's 0.5 unless told
otherwise; AP is scikit-learn's ``average_precision_score``. Tables are in percent.
"""
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from util import UserError


@dataclass(frozen=True)
class Metric:
    """A metric column: its key in result rows (percent), its header, its cell format, whether
    the text and Markdown tables show it (every metric goes to the CSV / JSON files), and, for
    a metric taken at the chosen decision threshold (shown only when there is one), the key of
    the metric it is at that threshold."""
    key: str
    header: str
    fmt: str = "{:.1f}"
    in_tables: bool = True
    at_threshold: str = None


# The one table of metric columns, in the order every table and file shows them.
METRICS = (
    Metric("acc", "ACC"), Metric("ap", "AP"), Metric("r_acc", "real ACC"), Metric("f_acc", "fake ACC"),
    Metric("auc", "AUC", in_tables=False), Metric("best_acc", "best ACC", in_tables=False),
    # ACC / real ACC / fake ACC at the chosen threshold
    Metric("acc_t", "ACC@t", at_threshold="acc"), Metric("r_acc_t", "real@t", at_threshold="r_acc"),
    Metric("f_acc_t", "fake@t", at_threshold="f_acc"),
)
METRIC_KEYS = tuple(m.key for m in METRICS if not m.at_threshold)
THRESHOLD_KEYS = tuple(m.key for m in METRICS if m.at_threshold)
SUMMARY_METRICS = METRIC_KEYS + THRESHOLD_KEYS


def compute_metrics(y_true, y_prob, threshold=0.5):
    """ACC / AP / real ACC / fake ACC / ROC-AUC / best-threshold ACC and counts, as a dict
    (fractions, not percent). ``balanced_threshold`` is the threshold with the best balanced
    accuracy ((real ACC + fake ACC) / 2, the largest TPR - FPR), which train.py stores in its
    checkpoints. Metrics undefined for a one-class set (AP, AUC) are NaN.
    """
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve  # on first use
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_prob = np.asarray(y_prob, dtype=np.float64).ravel()
    pred = y_prob > threshold
    real, fake = y_true == 0, y_true == 1
    nan = float("nan")
    out = {
        "acc": accuracy_score(y_true, pred) if len(y_true) else nan,
        # Fakes only: scikit-learn's AP is 1 whatever the scores, which says nothing.
        "ap": average_precision_score(y_true, y_prob) if real.any() and fake.any() else nan,
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


def threshold_at_fpr(real_probs, target_fpr):
    """The lowest threshold ``t`` such that at most ``target_fpr`` of ``real_probs`` are ``> t``
    (calibration on real images only: a target false-positive rate)."""
    probs = np.sort(np.asarray(real_probs, dtype=np.float64).ravel())[::-1]
    if not len(probs):
        raise UserError("no real image could be scored for the calibration")
    return float(probs[min(int(np.floor(target_fpr * len(probs))), len(probs) - 1)])


PAPER_THRESHOLD = 0.5
PAPER_SOURCE = "the paper's rule"
# What --threshold (and the demo's choice) accepts besides a probability.
THRESHOLD_CHOICES = {
    "auto": "the checkpoint's stored threshold when it has one, else the paper's 0.5",
    "stored": "the threshold train.py chose on its validation split (best balanced accuracy); an error without one",
    "paper": "0.5, the paper's rule",
}


class Threshold(NamedTuple):
    """A decision threshold (fake when ``prob > value``), where it comes from, and whether it is
    the paper's 0.5 by default (which the tables' ACC column already shows)."""
    value: float
    source: str
    is_paper_rule: bool = False


def decide_threshold(choice="auto", stored=None, calibrate_real=None, target_fpr=0.05, score_reals=None,
                     given_by="--threshold"):
    """The one decision threshold of every script and the demo: a ``Threshold``.

    ``calibrate_real`` (a folder of real images, scored by ``score_reals(folder)`` ->
    probabilities, NaN for images that cannot be used) wins; else ``choice``: a probability or
    one of ``THRESHOLD_CHOICES`` against the checkpoint's ``stored`` threshold (or None);
    ``given_by`` names where a probability came from.
    """
    if calibrate_real is not None:
        if not os.path.isdir(calibrate_real):
            raise UserError(f"--calibrate_real '{calibrate_real}' is not a folder")
        probs = np.asarray(score_reals(calibrate_real), dtype=np.float64)
        probs = probs[~np.isnan(probs)]
        t = threshold_at_fpr(probs, target_fpr)
        return Threshold(t, f"calibrated on {len(probs)} real images in {calibrate_real} for a false-positive "
                            f"rate of {target_fpr:g}")
    if isinstance(choice, (float, int)) and not isinstance(choice, bool):
        return Threshold(float(choice), f"given with {given_by}")
    if choice not in THRESHOLD_CHOICES:
        raise UserError(f"threshold '{choice}': a probability or one of {', '.join(THRESHOLD_CHOICES)}")
    if choice == "stored" and stored is None:
        raise UserError("--threshold stored: the checkpoint holds no threshold (train.py stores one in its "
                        "checkpoints); give a number or --calibrate_real")
    if choice != "paper" and stored is not None:
        return Threshold(float(stored), "stored by train.py: best balanced accuracy on its validation split")
    return Threshold(PAPER_THRESHOLD, PAPER_SOURCE + (" (the checkpoint stores no threshold)"
                                                      if choice == "auto" and stored is None else ""),
                     is_paper_rule=True)


def metrics_at(m, threshold):
    """ACC / real ACC / fake ACC (%) at ``threshold`` of a result holding ``y_true`` / ``y_prob``,
    keyed as THRESHOLD_KEYS."""
    mt = compute_metrics(m["y_true"], m["y_prob"], threshold)
    return {m.key: 100.0 * mt[m.at_threshold] for m in METRICS if m.at_threshold}


def metric_columns(m, threshold):
    """A table row's metric columns from ``compute_metrics``' ``m`` with its ``y_true`` and
    ``y_prob``: the metrics in %, the threshold t and the metrics at it, the class counts."""
    row = {k: 100.0 * m[k] for k in METRIC_KEYS}
    row.update({k: m[k] for k in ("best_threshold", "n_real", "n_fake", "y_true", "y_prob")}, threshold=threshold)
    if threshold is not None:
        row.update(metrics_at(m, threshold))
    return row


def mean_row(rows, suite_name):
    """The suite's Mean row: averages over its generators, as the paper's tables, leaving out
    those marked ``in_mean=False`` (GenImage's training generator); counts are totals."""
    out = {"suite": suite_name, "generator": "Mean", "perturbation": rows[0].get("perturbation", "none") if rows else "none",
           "threshold": rows[0].get("threshold") if rows else None}
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
