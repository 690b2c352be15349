"""Tables, result files and figures: everything here reads the result rows that
``engine.evaluate_suite`` returns (one dict per generator: metrics in %, the paper's numbers,
counts, and the raw ``y_true`` / ``y_prob``) or the summaries of ``metrics.summarize_checkpoints``.

Text tables for the terminal, ``results.csv`` / ``results.json`` / ``summary.csv`` and the
Markdown report ``results.md`` (``write_results``), ROC / PR / bar / sweep figures
(``make_figures``, ``test.py --plots``) and the NPR residual figure (``predict.py --visualize``).
"""
import csv
import os
import time

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve, roc_curve

from data.perturb import KINDS as PERTURBATION_KINDS
from data.transforms import normalize_batch
from metrics import METRIC_KEYS, METRICS, SUMMARY_METRICS, THRESHOLD_KEYS, mean_row
from networks import get_operator
from networks.detector import PIXEL_BUDGET, TILE
from util import atomic_file, sha256_of, write_json_atomically

# The paper's columns first; "perturbation" (none, or e.g. jpeg:75) sits at the end so the clean
# table's layout does not depend on whether --perturb was given.
RESULT_FIELDS = ["suite", "generator", *METRIC_KEYS, "best_threshold", "n_real", "n_fake", "n_images", "n_scored",
                 "n_skipped", "paper_acc", "paper_ap", "perturbation", "seconds", "folder", "n_truncated", "model_path",
                 "threshold", *THRESHOLD_KEYS]
SUMMARY_FIELDS = (["suite", "generator", "perturbation", "n_checkpoints"] +
                  [f"{k}_{stat}" for k in SUMMARY_METRICS for stat in ("mean", "sd")] + ["paper_acc", "paper_ap"])
# Every table's metric columns come from metrics.METRICS; the others are the tables' own.
METRIC_COLUMNS = [(m.key, m.header) for m in METRICS if m.in_tables]
CELL_FORMATS = {m.key: m.fmt for m in METRICS}
TABLE_COLUMNS = ([("generator", "generator")] + METRIC_COLUMNS + [("paper_acc", "paper ACC"), ("paper_ap", "paper AP"),
                 ("n_scored", "scored"), ("n_skipped", "skipped"), ("n_truncated", "truncated")])
SUMMARY_COLUMNS = ([("generator", "generator")] + METRIC_COLUMNS + [("paper_acc", "paper ACC"), ("paper_ap", "paper AP"),
                   ("n_checkpoints", "checkpoints")])


# ----------------------------------------------------------------------------- tables

def cell_text(value, key, floatfmt="{:.1f}"):
    """A table cell: '-' for None, a float in its metric's format (``metrics.METRICS``) or
    ``floatfmt``, anything else as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return CELL_FORMATS.get(key, floatfmt).format(value)
    return str(value)


def format_table(rows, columns, floatfmt="{:.1f}"):
    """Plain-text table of ``rows`` (list of dicts) for the given ``columns`` (key, header)."""
    body = [[cell_text(r.get(k), k, floatfmt) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, (_, h) in enumerate(columns)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((_, h), w) in enumerate(zip(columns, widths)))
    out = [line, "-" * len(line)]
    for b in body:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(out)


def shown_columns(rows, columns, key="acc_t"):
    """``columns`` without the ACC@t ones when no row has a threshold (no ``key`` value)."""
    if any(r.get(key) is not None for r in rows):
        return columns
    return [c for c in columns if c[0] not in THRESHOLD_KEYS]


def suite_table(rows, suite_name):
    """One suite's per-generator table with its Mean row."""
    return format_table(rows + [mean_row(rows, suite_name)], shown_columns(rows, TABLE_COLUMNS))


def summary_cell(row, key):
    mean, sd = row.get(f"{key}_mean"), row.get(f"{key}_sd")
    if mean is None:
        return None
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def summary_columns(rows):
    return shown_columns(rows, SUMMARY_COLUMNS, key="acc_t_mean")


def summary_table(rows):
    """Text table of ``summarize_checkpoints`` rows: mean ± sd per generator."""
    columns = summary_columns(rows)
    shown = [{k: (summary_cell(r, k) if k in SUMMARY_METRICS else r.get(k)) for k, _ in columns} for r in rows]
    return format_table(shown, columns)


def markdown_table(rows, columns, cell):
    out = "| " + " | ".join(h for _, h in columns) + " |\n|" + "---|" * len(columns) + "\n"
    for r in rows:
        out += "| " + " | ".join(cell_text(cell(r, k), k) for k, _ in columns) + " |\n"
    return out


def groups(rows):
    """(perturbation, suite, rows) in the order they were evaluated."""
    for pert, suite in dict.fromkeys((r.get("perturbation", "none"), r["suite"]) for r in rows):
        yield pert, suite, [r for r in rows if r["suite"] == suite and r.get("perturbation", "none") == pert]



# ----------------------------------------------------------------------------- files

def write_results(rows, results_dir, model_paths, dataroot, options, ema=False, figures=(), summary=(),
                  thresholds=None):
    """results.csv, results.json and the report results.md in ``results_dir`` (plus summary.csv
    with several checkpoints); returns their paths.

    The Markdown report gathers the tables, the ``options`` (a dict), the checkpoints' SHA-256,
    each checkpoint's threshold (``thresholds``: path -> (threshold, source)) and the figures.
    """
    os.makedirs(results_dir, exist_ok=True)
    flat = [{k: r.get(k) for k in RESULT_FIELDS} for r in rows]
    paths = {ext: os.path.join(results_dir, f"results.{ext}") for ext in ("csv", "json", "md")}
    with atomic_file(paths["csv"], newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        w.writeheader()
        w.writerows(flat)
    if summary:
        paths["summary"] = os.path.join(results_dir, "summary.csv")
        with atomic_file(paths["summary"], newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(summary)
    hashes = {p: sha256_of(p) for p in model_paths}
    thresholds = thresholds or {}
    meta = {"model_path": model_paths, "model_sha256": hashes, "dataroot": dataroot, "ema": ema,
            "thresholds": {p: {"threshold": t, "source": src} for p, (t, src) in thresholds.items()},
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "metrics": "percent; ACC at threshold 0.5, AP from scikit-learn; summary: mean and sample standard "
                       "deviation (ddof=1) across checkpoints"}
    write_json_atomically({"meta": meta, "results": flat, "summary": list(summary)}, paths["json"])
    with atomic_file(paths["md"]) as f:
        f.write("# NPR results\n\n" + "".join(f"Checkpoint: `{p}` (SHA-256 `{h}`)" + (" (moving-average weights)" if
                                                ema else "") + "  \n" for p, h in hashes.items()) +
                f"Data: `{dataroot}`  \nRun: {meta['time']}  \nMetrics in %. ACC, real ACC and fake ACC call "
                "an image fake when its probability is above 0.5 (the paper's rule)")
        used = {p: v for p, v in thresholds.items() if v[0] is not None}
        if used:
            f.write("; ACC@t, real@t and fake@t use the threshold t of each checkpoint:\n\n" +
                    "".join(f"- `{p}`: t = {t:.4f}, {src}\n" for p, (t, src) in used.items()))
        else:
            f.write(".\n")
        if summary:
            f.write(f"\n# Mean ± standard deviation over {len(model_paths)} checkpoints\n")
            for pert, suite, srows in groups(summary):
                title = suite if pert == "none" else f"{suite}, perturbation {pert}"
                f.write(f"\n## {title}\n\n" + markdown_table(
                    srows, summary_columns(srows), lambda r, k: summary_cell(r, k) if k in SUMMARY_METRICS else r.get(k)))
        for path in model_paths:
            if len(model_paths) > 1:
                f.write(f"\n# Checkpoint `{path}`\n")
            for pert, suite, srows in groups([r for r in rows if r.get("model_path") == path]):
                title = suite if pert == "none" else f"{suite}, perturbation {pert}"
                f.write(f"\n## {title}\n\n" + markdown_table(srows, shown_columns(srows, TABLE_COLUMNS),
                                                               lambda r, k: r.get(k)))
        if figures:
            f.write("\n## Figures\n\n" + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n"
                                                    for p in figures))
        f.write("\n## Options\n\n```\n" + "\n".join(f"{k}: {v}" for k, v in sorted(options.items())) + "\n```\n")
    return paths



# ----------------------------------------------------------------------------- figures

def _pyplot():
    import matplotlib  # optional heavy dependency: only figures need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
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


def residual_figure(img, residual, prob, threshold, name, out, label="NPR residual"):
    """Write ``out``: image | the artifact operator's output (``label``: the NPR residual by
    default) per channel, amplified | its magnitude, titled with ``name``, the probability and
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
    """The figure of each scored image (``engine.score_files``): the image and what ``model``'s
    artifact operator makes of it (the NPR residual, or SAFE's wavelet sub-band), written to
    ``folder`` as ``<number>_<name>_<operator>.png`` (numbered: files in different folders often
    share a name)."""

    def __init__(self, model, folder):
        self.model, self.folder = model, folder
        self.label = get_operator(model.operator).label
        os.makedirs(folder, exist_ok=True)

    def __call__(self, number, score, threshold):
        name = os.path.basename(score.image)
        os.makedirs(self.folder, exist_ok=True)  # a long-running demo outlives cleaners of /tmp
        out = os.path.join(self.folder, f"{number:04d}_{os.path.splitext(name)[0]}_{self.model.operator}.png")
        pixels, title = figure_pixels(score.pixels, name)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            residual = self.model.artifact(normalize_batch(pixels.unsqueeze(0).to(device))).float().cpu()
        return residual_figure(pixels.permute(1, 2, 0).numpy(), residual, score.prob, threshold, title, out,
                               self.label)


def figure_pixels(pixels, name):
    """(pixels, title) for an image's figure: above the pixel budget, its central TILE x TILE crop
    (on NPR's 2x2 grid), so a phone photo's figure stays small."""
    h, w = pixels.shape[-2:]
    if h * w <= PIXEL_BUDGET:
        return pixels, name
    th, tw = min(h, TILE), min(w, TILE)
    top, left = (h - th) // 4 * 2, (w - tw) // 4 * 2
    return pixels[:, top:top + th, left:left + tw], f"{name} (central {tw}x{th} of {w}x{h})"
