"""The per-image scores that test.py keeps beside its tables (``scores.csv.gz``): written, read
back and checked, and turned into the rows the tables are made of.

One row per image a checkpoint was run on: the checkpoint (its path and SHA-256), the
perturbation, the suite, the generator, the image's path relative to --dataroot, its label (0
real, 1 fake), P(fake) (empty for a skipped image), its status ('scored', 'truncated', or why it
was skipped), the threshold t of ACC@t (empty without one) and whether the generator counts in
its suite's Mean. A gzip-compressed CSV, which pandas (``pd.read_csv``) and NumPy
(``np.loadtxt(..., delimiter=",", dtype=str, quotechar='"')``) read as it is; every number of
the tables can be recomputed from it (``rows_from_scores``).
"""
import csv
import gzip
import io
import math
import os
import zlib

import numpy as np

from data.images import SKIP_REASONS
from metrics import compute_metrics, mean_row, metric_columns
from files import atomic_file
from util import UserError

FIELDS = ["checkpoint", "checkpoint_sha256", "perturbation", "suite", "generator", "path", "label", "prob_fake",
          "status", "threshold", "in_mean"]
SCORED = ("scored", "truncated")
STATUSES = SCORED + tuple(SKIP_REASONS)
NAME = "scores.csv.gz"


def score_rows(rows, dataroot):
    """The per-image rows of result rows (``engine.evaluate_suite``'s, with ``model_path``,
    ``model_sha256`` and ``images``), Mean rows left out."""
    for r in rows:
        if "images" not in r:
            continue
        probs = iter(r["y_prob"])
        for path, label, status in r["images"]:
            prob = float(next(probs)) if status in SCORED else None
            yield {"checkpoint": r["model_path"], "checkpoint_sha256": r["model_sha256"],
                   "perturbation": r.get("perturbation", "none"), "suite": r["suite"], "generator": r["generator"],
                   "path": os.path.relpath(path, dataroot), "label": int(label),
                   "prob_fake": "" if prob is None else repr(prob), "status": status,
                   "threshold": "" if r.get("threshold") is None else repr(float(r["threshold"])),
                   "in_mean": int(bool(r.get("in_mean", True)))}


def write_scores(rows, path, dataroot):
    """``path`` (gzip, the same bytes for the same rows: no time stamp inside), written atomically."""
    with atomic_file(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8", errors="surrogateescape", newline="") as text:
        w = csv.DictWriter(text, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(score_rows(rows, dataroot))
    return path


def read_scores(path):
    """The rows of a scores file, checked: a file that is cut, edited or not one of ours is one
    ``UserError`` naming what is wrong and where."""
    def bad(why):
        return UserError(f"scores file {path}: {why}; write it again with test.py (it is written beside results.csv)")
    if not os.path.isfile(path):
        raise UserError(f"scores file {path} does not exist (test.py writes {NAME} beside results.csv)")
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != FIELDS:
                raise bad(f"its columns are {', '.join(reader.fieldnames or ['none'])}, not {', '.join(FIELDS)}")
            rows = [check_row(row, i, bad) for i, row in enumerate(reader, 2)]
    except (OSError, EOFError, zlib.error, csv.Error) as e:
        raise bad(f"cannot be read ({e})") from None
    seen = set()
    for i, r in enumerate(rows, 2):
        key = (r["checkpoint_sha256"], r["checkpoint"], r["perturbation"], r["suite"], r["generator"], r["path"])
        if key in seen:
            raise bad(f"line {i} repeats the image {r['path']} of {r['suite']}/{r['generator']}")
        seen.add(key)
    if not rows:
        raise bad("it holds no image")
    return rows


def check_row(row, line, bad):
    """``row`` with its numbers read, or ``bad``'s error naming the ``line``."""
    if None in row or any(v is None for v in row.values()):
        raise bad(f"line {line} has {'more' if None in row else 'fewer'} fields than the {len(FIELDS)} columns")
    try:
        label, in_mean = int(row["label"]), int(row["in_mean"])
        prob = float(row["prob_fake"]) if row["prob_fake"] != "" else None
        threshold = float(row["threshold"]) if row["threshold"] != "" else None
    except ValueError as e:
        raise bad(f"line {line}: {e}") from None
    if label not in (0, 1) or in_mean not in (0, 1):
        raise bad(f"line {line}: label {row['label']!r} and in_mean {row['in_mean']!r} must be 0 or 1")
    if row["status"] not in STATUSES:
        raise bad(f"line {line}: status {row['status']!r} is none of {', '.join(STATUSES)}")
    if (prob is None) != (row["status"] not in SCORED) or (prob is not None and not 0.0 <= prob <= 1.0):
        raise bad(f"line {line}: P(fake) {row['prob_fake']!r} does not fit its status {row['status']!r}")
    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise bad(f"line {line}: threshold {row['threshold']!r} is not a probability")
    return {**row, "label": label, "prob_fake": prob, "threshold": threshold, "in_mean": bool(in_mean)}


def group_scores(rows):
    """{(checkpoint, sha256, perturbation, suite, generator): its rows}, in the order of the file."""
    out = {}
    for r in rows:
        out.setdefault((r["checkpoint"], r["checkpoint_sha256"], r["perturbation"], r["suite"], r["generator"]),
                       []).append(r)
    return out


def rows_from_scores(rows):
    """The result rows (metrics in %, counts, each suite's Mean row) that the per-image ``rows``
    give, in the file's order: what test.py's tables show, recomputed without the model."""
    out, suite_rows = [], {}
    for (ckpt, sha, pert, suite, gen), images in group_scores(rows).items():
        scored = [r for r in images if r["status"] in SCORED]
        y_true = np.array([r["label"] for r in scored], dtype=np.int64)
        y_prob = np.array([r["prob_fake"] for r in scored], dtype=np.float64)
        m = dict(compute_metrics(y_true, y_prob), y_true=y_true, y_prob=y_prob)
        row = {"suite": suite, "generator": gen, "perturbation": pert, "model_path": ckpt, "model_sha256": sha,
               "in_mean": images[0]["in_mean"] and bool(m["n_real"] and m["n_fake"]),
               **metric_columns(m, images[0]["threshold"]), "n_images": len(images), "n_scored": len(scored),
               "n_skipped": len(images) - len(scored), "n_truncated": sum(r["status"] == "truncated" for r in scored)}
        suite_rows.setdefault((ckpt, sha, pert, suite), []).append(row)
    for (ckpt, sha, _, suite), srows in suite_rows.items():
        out += srows + [dict(mean_row(srows, suite), model_path=ckpt, model_sha256=sha)]
    return out


def checkpoints_of(rows):
    """{(checkpoint, sha256): {(perturbation, suite, generator): {path: (label, P(fake))}}} of the
    scored images of score ``rows``, and {(perturbation, suite, generator): in_mean}."""
    out, in_mean = {}, {}
    for (ckpt, sha, pert, suite, gen), images in group_scores(rows).items():
        out.setdefault((ckpt, sha), {})[(pert, suite, gen)] = {
            r["path"]: (r["label"], r["prob_fake"]) for r in images if r["status"] in SCORED}
        in_mean[(pert, suite, gen)] = images[0]["in_mean"]
    return out, in_mean


def shared_images(group_a, group_b, in_mean):
    """What ``bootstrap.comparison_rows`` compares: {(perturbation, suite, generator): (labels,
    P(fake) of group A's checkpoints, of B's, in_mean, counts)} over the images that every
    checkpoint of both groups scored (the lists of ``checkpoints_of`` values), and a line on what
    was left out. Checkpoints that disagree on an image's label were not run on one benchmark:
    one ``UserError``."""
    members = list(group_a) + list(group_b)
    keys = [k for k in members[0] if all(k in m for m in members)]
    left = sorted({"/".join(k[1:]) for m in members for k in m} - {"/".join(k[1:]) for k in keys})
    shared, notes = {}, []
    for key in keys:
        common = sorted(set.intersection(*(set(m[key]) for m in members)))
        labels = [members[0][key][p][0] for p in common]
        for m in members[1:]:
            wrong = sum(m[key][p][0] != lab for p, lab in zip(common, labels))
            if wrong:
                raise UserError(f"--compare: {'/'.join(key[1:])}: the detectors disagree on the label of {wrong} "
                                "image(s) with the same path: they were not scored on the same benchmark")
        if not common:
            notes.append(f"{'/'.join(key[1:])}: no image scored by both")
            continue
        sizes = [len(m[key]) for m in members]
        if min(sizes) != len(common) or max(sizes) != len(common):
            notes.append(f"{'/'.join(key[1:])}: {len(common)} images both scored (of {min(sizes)}-{max(sizes)})")
        probs = [np.array([m[key][p][1] for p in common]) for m in members]
        shared[key] = (np.array(labels), np.array(probs[:len(group_a)]), np.array(probs[len(group_a):]),
                       in_mean.get(key, True), {"n_a": max(sizes[:len(group_a)]), "n_b": max(sizes[len(group_a):])})
    if left:
        notes.append(f"not scored by every detector, not compared: {', '.join(left)}")
    if not shared:
        raise UserError("--compare: the detectors share no scored image (scores of another benchmark, or another "
                        "--dataroot?)")
    return shared, notes
