"""Figures and the Markdown report of a test run (``test.py --plots``).

Everything reads the result rows that ``validate.evaluate_suite`` returns: one dict per
generator (metrics in %, the paper's numbers, and the raw ``y_true`` / ``y_prob``).
"""
import hashlib
import os

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def plot_curves(rows, suite, path):
    """ROC and precision-recall curves of every generator of one suite."""
    from sklearn.metrics import precision_recall_curve, roc_curve
    plt = _pyplot()
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    for r in rows:
        y, p = r["y_true"], r["y_prob"]
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        prec, rec, _ = precision_recall_curve(y, p)
        ax_roc.plot(fpr, tpr, label=f"{r['generator']} (AUC {r['auc']:.1f})")
        ax_pr.plot(rec, prec, label=f"{r['generator']} (AP {r['ap']:.1f})")
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{suite}: ROC")
    ax_pr.set(xlabel="recall (fake)", ylabel="precision (fake)", title=f"{suite}: precision-recall", ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    return _save(fig, path)


def plot_bars(rows, suite, path):
    """Per-generator ACC and AP, with the paper's values beside ours where known."""
    plt = _pyplot()
    names = [r["generator"] for r in rows]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(names) * 2), 4.2))
    for ax, key in zip(axes, ("acc", "ap")):
        ours = [r[key] for r in rows]
        paper = [r.get(f"paper_{key}") for r in rows]
        has_paper = any(v is not None for v in paper)
        w = 0.38 if has_paper else 0.6
        ax.bar(x - (w / 2 if has_paper else 0), ours, w, label="ours", color="tab:blue")
        if has_paper:
            ax.bar(x + w / 2, [v if v is not None else 0 for v in paper], w, label="paper", color="tab:gray")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set(ylim=(0, 105), ylabel=f"{key.upper()} (%)", title=f"{suite}: {key.upper()}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_sweeps(rows, suite, path):
    """AP against perturbation strength, one line per generator, one panel per kind."""
    plt = _pyplot()
    by_kind = {}
    for r in rows:
        steps = r.get("steps", ())
        if len(steps) == 1:
            by_kind.setdefault(steps[0][0], []).append((steps[0][1], r))
    if not by_kind:
        return None
    clean = {r["generator"]: r["ap"] for r in rows if not r.get("steps")}
    fig, axes = plt.subplots(1, len(by_kind), figsize=(5 * len(by_kind), 4), squeeze=False)
    for ax, (kind, items) in zip(axes[0], sorted(by_kind.items())):
        for gen in dict.fromkeys(r["generator"] for _, r in items):
            pts = sorted((v, r["ap"]) for v, r in items if r["generator"] == gen)
            if gen in clean:  # the clean point: quality 100, sigma 0, scale 1
                pts = sorted(pts + [({"jpeg": 100.0, "blur": 0.0, "resize": 1.0}[kind], clean[gen])])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=gen)
        ax.set(xlabel={"jpeg": "JPEG quality", "blur": "blur sigma", "resize": "resize scale"}[kind],
               ylabel="AP (%)", title=f"{suite}: AP vs {kind}", ylim=(40, 101))
        if kind in ("jpeg", "resize"):
            ax.invert_xaxis()  # stronger perturbation to the right
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def make_figures(rows, out_dir):
    """Every figure for the result rows; returns the list of written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for suite in dict.fromkeys(r["suite"] for r in rows):
        srows = [r for r in rows if r["suite"] == suite and "y_true" in r]
        clean = [r for r in srows if r.get("perturbation", "none") == "none"] or \
                [r for r in srows if r.get("perturbation") == srows[0].get("perturbation")]
        paths.append(plot_curves(clean, suite, os.path.join(out_dir, f"{_slug(suite)}_roc_pr.png")))
        paths.append(plot_bars(clean, suite, os.path.join(out_dir, f"{_slug(suite)}_acc_ap.png")))
        sweep = plot_sweeps(srows, suite, os.path.join(out_dir, f"{_slug(suite)}_sweep.png"))
        if sweep:
            paths.append(sweep)
    return paths
