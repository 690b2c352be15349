"""Tables and result files of an evaluation: text tables for the terminal, and
``results.csv`` / ``results.json`` / ``summary.csv`` and the Markdown report ``results.md``
(``write_results``). Everything here reads the result rows that ``engine.evaluate_suite``
returns (one dict per generator: metrics in %, the paper's numbers, counts) or the summaries
of ``metrics.summarize_checkpoints``. Figures are ``figures.py``'s; predict.py's files are
``prediction_store.py``'s.
"""
import math
import os
import time


from bootstrap import KEYS as INTERVAL_KEYS
from metrics import METRIC_KEYS, METRICS, SUMMARY_METRICS, THRESHOLD_KEYS, mean_row
from scores import NAME as SCORES_NAME
from scores import write_scores
from files import atomic_file, sha256_of, write_csv_atomically, write_json_atomically

# The paper's columns first; "perturbation" (none, or e.g. jpeg:75) sits at the end so the clean
# table's layout does not depend on whether --perturb was given.
RESULT_FIELDS = ["suite", "generator", *METRIC_KEYS, "best_threshold", "n_real", "n_fake", "n_images", "n_scored",
                 "n_skipped", "paper_acc", "paper_ap", "perturbation", "seconds", "folder", "n_truncated", "model_path",
                 "threshold", *THRESHOLD_KEYS, *(f"{k}_{b}" for k in INTERVAL_KEYS for b in ("lo", "hi")),
                 "model_sha256"]
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


def row_cell(row, key, floatfmt="{:.1f}"):
    """``cell_text`` of ``row[key]``, followed by its 95 % interval where the row has one
    (``bootstrap.add_intervals``): ``97.9 [95.8, 99.3]``."""
    text = cell_text(row.get(key), key, floatfmt)
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if isinstance(lo, float) and isinstance(hi, float) and math.isfinite(lo) and math.isfinite(hi):
        text += f" [{cell_text(lo, key, floatfmt)}, {cell_text(hi, key, floatfmt)}]"
    return text


def format_table(rows, columns, floatfmt="{:.1f}"):
    """Plain-text table of ``rows`` (list of dicts) for the given ``columns`` (key, header)."""
    body = [[row_cell(r, k, floatfmt) for k, _ in columns] for r in rows]
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


def suite_table(rows, suite_name, mean=None):
    """One suite's per-generator table with its Mean row (``mean``, or computed from ``rows``)."""
    return format_table(rows + [mean or mean_row(rows, suite_name)], shown_columns(rows, TABLE_COLUMNS))


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


def markdown_table(rows, columns, cell=None):
    """A Markdown table; ``cell(row, key)`` gives a cell's value (default: ``row_cell``'s text)."""
    out = "| " + " | ".join(h for _, h in columns) + " |\n|" + "---|" * len(columns) + "\n"
    for r in rows:
        out += "| " + " | ".join(row_cell(r, k) if cell is None else cell_text(cell(r, k), k) for k, _ in columns) + \
            " |\n"
    return out


def groups(rows):
    """(perturbation, suite, rows) in the order they were evaluated."""
    for pert, suite in dict.fromkeys((r.get("perturbation", "none"), r["suite"]) for r in rows):
        yield pert, suite, [r for r in rows if r["suite"] == suite and r.get("perturbation", "none") == pert]



# ----------------------------------------------------------------------------- files

def write_results(rows, results_dir, model_paths, dataroot, options, ema=False, figures=(), summary=(),
                  thresholds=None, bootstrap=(0, 0)):
    """results.csv, results.json, the report results.md and the per-image scores.csv.gz
    (``scores.write_scores``) in ``results_dir`` (plus summary.csv with several checkpoints);
    returns their paths.

    The Markdown report gathers the tables, the ``options`` (a dict), the checkpoints' SHA-256,
    each checkpoint's threshold (``thresholds``: path -> ``metrics.Threshold``), how the intervals
    were drawn (``bootstrap``: replicates, seed) and the figures.
    """
    os.makedirs(results_dir, exist_ok=True)
    flat = [{k: r.get(k) for k in RESULT_FIELDS} for r in rows]
    paths = {ext: os.path.join(results_dir, f"results.{ext}") for ext in ("csv", "json", "md")}
    write_csv_atomically(flat, paths["csv"], RESULT_FIELDS)
    if summary:
        paths["summary"] = os.path.join(results_dir, "summary.csv")
        write_csv_atomically(summary, paths["summary"], SUMMARY_FIELDS)
    paths["scores"] = write_scores(rows, os.path.join(results_dir, SCORES_NAME), dataroot)
    known = {r["model_path"]: r["model_sha256"] for r in rows if r.get("model_sha256")}  # the bytes that were loaded
    hashes = {p: known.get(p) or sha256_of(p) for p in model_paths}
    thresholds = thresholds or {}
    n, seed = bootstrap
    intervals = f"95 % intervals ([lo, hi], and the _lo / _hi fields) from {n} replicates of a Bayesian bootstrap " \
        f"over images within each class (seed {seed}; bootstrap.py)" if n else "no intervals (--bootstrap 0)"
    meta = {"model_path": model_paths, "model_sha256": hashes, "dataroot": dataroot, "ema": ema,
            "thresholds": {p: {"threshold": None, "source": "none"} if t.is_paper_rule else
                           {"threshold": t.value, "source": t.source} for p, t in thresholds.items()},
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "bootstrap": {"replicates": n, "seed": seed},
            "metrics": "percent; ACC at threshold 0.5, AP from scikit-learn; " + intervals + "; summary: mean and "
                       "sample standard deviation (ddof=1) across checkpoints", "scores": SCORES_NAME}
    write_json_atomically({"meta": meta, "results": flat, "summary": list(summary)}, paths["json"])
    with atomic_file(paths["md"]) as f:
        f.write("# NPR results\n\n" + "".join(f"Checkpoint: `{p}` (SHA-256 `{h}`)" + (" (moving-average weights)" if
                                                ema else "") + "  \n" for p, h in hashes.items()) +
                f"Data: `{dataroot}`  \nRun: {meta['time']}  \nPer-image scores: `{SCORES_NAME}`  \nMetrics in %, "
                f"with {intervals}. ACC, real ACC and fake ACC call "
                "an image fake when its probability is above 0.5 (the paper's rule)")
        used = {p: (t.value, t.source) for p, t in thresholds.items() if not t.is_paper_rule}
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
                f.write(f"\n## {title}\n\n" + markdown_table(srows, shown_columns(srows, TABLE_COLUMNS)))
        if figures:
            f.write("\n## Figures\n\n" + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n"
                                                    for p in figures))
        f.write("\n## Options\n\n```\n" + "\n".join(f"{k}: {v}" for k, v in sorted(options.items())) + "\n```\n")
    return paths


# ----------------------------------------------------------------------------- comparisons

COMPARISON_FIELDS = ["perturbation", "suite", "generator", "n_images", "n_real", "n_fake", "n_a", "n_b",
                     *(f"{f}" for k in ("ap", "acc") for f in (f"{k}_a", f"{k}_b", f"d_{k}", f"d_{k}_lo", f"d_{k}_hi",
                                                                f"p_{k}", f"p_{k}_holm", f"holds_{k}"))]


def delta_cell(row, key):
    """``+1.2 [-0.3, 2.8]`` for the difference ``key`` of a comparison row."""
    d, lo, hi = row.get(f"d_{key}"), row.get(f"d_{key}_lo"), row.get(f"d_{key}_hi")
    if d is None or not math.isfinite(d):
        return "-"
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" if math.isfinite(lo) else f"{d:+.1f}"


def p_cell(row, key):
    """``0.004 *``: the p-value, starred where the difference holds after Holm's correction."""
    p = row.get(f"p_{key}")
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.3f}" + (" *" if row.get(f"holds_{key}") else "")


def comparison_table(rows, markdown=False):
    """The per-generator comparison of two detectors, as text (or Markdown)."""
    columns = [("generator", "generator"), ("n_images", "images"), ("ap_a", "AP A"), ("ap_b", "AP B"),
               ("d_ap", "ΔAP [95% CI]"), ("p_ap", "p"), ("acc_a", "ACC A"), ("acc_b", "ACC B"),
               ("d_acc", "ΔACC [95% CI]"), ("p_acc", "p")]
    shown = [{k: (delta_cell(r, k[2:]) if k.startswith("d_") else p_cell(r, k[2:]) if k.startswith("p_") else
                  r.get(k)) for k, _ in columns} for r in rows]
    return markdown_table(shown, columns) if markdown else format_table(shown, columns)


def write_comparison(rows, results_dir, meta):
    """compare.csv and compare.json (``meta``: what was compared, and how) in ``results_dir``."""
    paths = {"csv": os.path.join(results_dir, "compare.csv"), "json": os.path.join(results_dir, "compare.json")}
    write_csv_atomically(rows, paths["csv"], COMPARISON_FIELDS)
    write_json_atomically({"meta": meta, "comparison": rows}, paths["json"])
    return paths
