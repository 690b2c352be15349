"""Figures, drawn from what they show: ROC / PR / bar / sweep figures of result rows
(``make_figures``, ``test.py --plots``) and the figure of one scored image beside what the
artifact operator makes of it (``ArtifactFigures``: ``predict.py --visualize`` and the demo;
``engine.score_files`` computes that map with the model and passes it in).
"""
import os

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from data.perturb import KINDS as PERTURBATION_KINDS
from networks import get_operator
from networks.detector import PIXEL_BUDGET, TILE
from files import atomic_file, cut_name
from util import log


def _pyplot():
    import matplotlib  # optional heavy dependency: only figures need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    try:
        fig.tight_layout()
        with atomic_file(path, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
    finally:
        _pyplot().close(fig)
    return path


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def plot_curves(rows, suite, path):
    """ROC and precision-recall curves of every generator of one suite."""
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
                pts = sorted(pts + [(PERTURBATION_KINDS[kind].clean, clean[gen])])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=gen)
        ax.set(xlabel=PERTURBATION_KINDS[kind].label, ylabel="AP (%)", title=f"{suite}: AP vs {kind}", ylim=(40, 101))
        if PERTURBATION_KINDS[kind].milder_above:
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


def residual_figure(img, residual, prob, threshold, name, out, label):
    """Write ``out``: image | the artifact operator's output (``label``: its name, e.g. "NPR
    residual") per channel, amplified | its magnitude, titled with ``name``, the probability and
    the verdict at ``threshold``."""
    plt = _pyplot()
    r = residual[0].permute(1, 2, 0).numpy()
    mag = np.abs(r).mean(axis=2)
    scale = np.percentile(np.abs(r), 99) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    axes[0].imshow(img)
    axes[0].set_title("image")
    axes[1].imshow(np.clip(0.5 + r / (2 * scale), 0, 1))
    axes[1].set_title(f"{label} per channel (amplified)")
    axes[2].imshow(mag, cmap="magma", vmin=0, vmax=np.percentile(mag, 99) or 1.0)
    axes[2].set_title("magnitude")
    for ax in axes:
        ax.axis("off")
    verdict = "fake" if prob > threshold else "real"
    fig.suptitle(f"{name}: P(fake) = {prob:.3f} -> {verdict}")
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # leave room for the title
    with atomic_file(out, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return out


class ArtifactFigures:
    """The figure of each scored image: the image and what an artifact operator made of it (the
    NPR residual, or SAFE's wavelet sub-band), written to ``folder`` as
    ``<number>_<name>_<operator>.png`` (numbered: files in different folders often share a name)."""

    def __init__(self, folder, operator):
        self.folder, self.operator = folder, operator
        self.label = get_operator(operator).label
        os.makedirs(folder, exist_ok=True)

    def __call__(self, number, name, shown, residual, prob, threshold):
        """Draw the image's ``shown`` pixels (``figure_pixels``) and their ``residual``; the path."""
        pixels, title = shown
        os.makedirs(self.folder, exist_ok=True)  # a long-running demo outlives cleaners of /tmp
        # the stem within 120 bytes: the file name, with its number, suffix and temporary prefix, within 255
        out = os.path.join(self.folder, f"{number:04d}_{cut_name(os.path.splitext(name)[0], 120)}_{self.operator}.png")
        try:
            return residual_figure(pixels.permute(1, 2, 0).numpy(), residual, prob, threshold, title, out, self.label)
        except OSError as e:  # a full disk costs the figure, not the scan (the row has no figure)
            log.warning("figure of %s not written: %s (%s)", name, out, e.strerror or e)
            return None


def figure_pixels(pixels, name):
    """(pixels, title) for an image's figure: above the pixel budget, its central TILE x TILE crop
    (on NPR's 2x2 grid), so a phone photo's figure stays small."""
    h, w = pixels.shape[-2:]
    if h * w <= PIXEL_BUDGET:
        return pixels, name
    th, tw = min(h, TILE), min(w, TILE)
    top, left = (h - th) // 4 * 2, (w - tw) // 4 * 2
    return pixels[:, top:top + th, left:left + tw], f"{name} (central {tw}x{th} of {w}x{h})"
