"""Evaluate a checkpoint on the benchmark: per-generator ACC / AP tables with a Mean row per suite.

    python test.py                                            # NPR-mini with the mini checkpoint
    python test.py --dataroot ./datasets --model_path NPR.pth # every known suite found there
    python test.py --dataroot ./datasets --model_path NPR.pth --suites ForenSynths,GenImage
    python test.py --dataroot ./datasets --model_path seed100.pth seed101.pth seed102.pth  # + mean ± sd

``--dataroot`` holds the suite folders (names in ``data/benchmarks.py``, matched
case-insensitively). A folder there that is not a known suite is evaluated as a custom suite
(every generator folder under it, no resize, no crop). Results go to ``--results_dir`` as
CSV, JSON and Markdown. With several checkpoints (one per training seed, say), every
checkpoint gets its tables and ``summary.csv`` / the report add, per generator, the mean and
the sample standard deviation across checkpoints: one seed's number is not a reproduction.
"""
import csv
import json
import os
import sys
import time

from data.perturb import parse_perturbations
from data.benchmarks import SUITES, custom_suite, has_leaves, locate_suite, suite_by_name
from networks import load_detector
from options import MINI_ROOT, check_test, explicit_options, print_options, test_parser
from util import UserError, ensure_writable_dir, format_table, log, run_cli, select_device, set_numerics, setup_logging
from validate import (SUMMARY_METRICS, TABLE_COLUMNS, evaluate_suite, mean_row, prepare_model, eval_threshold,
                      shown_columns, suite_table, summarize_checkpoints)

MINI_CHECKPOINT = "checkpoints/npr-mini/model_epoch_last.pth"
# The paper's columns first; "perturbation" (none, or e.g. jpeg:75) sits at the end so the clean
# table's layout does not depend on whether --perturb was given.
RESULT_FIELDS = ["suite", "generator", "acc", "ap", "r_acc", "f_acc", "auc", "best_acc", "best_threshold",
                 "n_real", "n_fake", "n_images", "n_scored", "n_skipped", "paper_acc", "paper_ap", "perturbation",
                 "seconds", "folder", "n_truncated", "model_path", "threshold", "acc_t", "r_acc_t", "f_acc_t"]
SUMMARY_FIELDS = (["suite", "generator", "perturbation", "n_checkpoints"] +
                  [f"{k}_{stat}" for k in SUMMARY_METRICS for stat in ("mean", "sd")] + ["paper_acc", "paper_ap"])


def parse_options(argv):
    parser = test_parser()
    opt = parser.parse_args(argv)
    if opt.perturb:
        parse_perturbations(opt.perturb)  # a bad sweep fails before any work
    typed = explicit_options(parser, argv)
    opt.auto_workers = "num_threads" not in typed
    opt.mini = opt.dataroot is None
    if opt.mini:
        from data.mini import MINI_RECIPE
        opt.dataroot = os.path.dirname(MINI_ROOT)
        for k in ("loadSize", "cropSize"):
            if k not in typed:
                setattr(opt, k, MINI_RECIPE[k])
        if "suites" not in typed:
            opt.suites = "NPR-mini"
        if "results_dir" not in typed:
            opt.results_dir = os.path.join(opt.results_dir, "npr-mini")
        if opt.model_path is None:
            opt.model_path = [MINI_CHECKPOINT]
            if not os.path.isfile(MINI_CHECKPOINT):
                raise UserError(f"no --model_path given and no mini checkpoint at {MINI_CHECKPOINT}; "
                                "run `python train.py` first, or pass --model_path")
    if opt.model_path is None:
        raise UserError("--model_path is required: the checkpoint to evaluate (e.g. NPR.pth)")
    absent = [p for p in opt.model_path if not os.path.isfile(p)]
    if absent:
        raise UserError(f"--model_path: no checkpoint at {', '.join(absent)}")
    return check_test(opt)


def resolve_suites(dataroot, wanted):
    """[(suite, folder)] to evaluate and the names of the suites asked for with --suites that are
    absent (suites nobody asked for are not mentioned)."""
    if not os.path.isdir(dataroot):
        raise UserError(f"--dataroot '{dataroot}' does not exist")
    found, used = [], set()
    for suite in SUITES:
        path = locate_suite(dataroot, suite)
        if path:
            found.append((suite, path))
            used.add(os.path.normcase(os.path.abspath(path)))
    for d in sorted(os.listdir(dataroot)):
        path = os.path.join(dataroot, d)
        if os.path.normcase(os.path.abspath(path)) in used or not os.path.isdir(path):
            continue
        if any(os.path.normcase(os.path.abspath(u)).startswith(os.path.normcase(os.path.abspath(path)) + os.sep)
               for u in used):
            continue  # a parent of a known suite's folder (e.g. npr-mini holding test/)
        suite = custom_suite(path)
        if suite.generators:
            found.append((suite, path))
    if not found and has_leaves(dataroot):
        found.append((custom_suite(dataroot), dataroot))
    missing = []
    if wanted:
        names = {s.name.lower() for s, _ in found}
        for w in wanted:
            if w.lower() in names:
                continue
            if suite_by_name(w) is None:
                known = ", ".join(s.name for s in SUITES)
                raise UserError(f"--suites: unknown suite '{w}'; known suites: {known}, or a folder name under "
                                f"'{dataroot}'")
            missing.append(w)
        found = [(s, p) for s, p in found if s.name.lower() in {w.lower() for w in wanted}]
    return found, missing


def summary_cell(row, key):
    mean, sd = row.get(f"{key}_mean"), row.get(f"{key}_sd")
    if mean is None:
        return None
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


SUMMARY_COLUMNS = [("generator", "generator"), ("acc", "ACC"), ("ap", "AP"), ("r_acc", "real ACC"),
                   ("f_acc", "fake ACC"), ("acc_t", "ACC@t"), ("r_acc_t", "real@t"), ("f_acc_t", "fake@t"),
                   ("paper_acc", "paper ACC"), ("paper_ap", "paper AP"), ("n_checkpoints", "checkpoints")]


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
        cells = [cell(r, k) for k, _ in columns]
        out += "| " + " | ".join("-" if c is None else f"{c:.1f}" if isinstance(c, float) else str(c)
                                 for c in cells) + " |\n"
    return out


def groups(rows):
    """(perturbation, suite, rows) in the order they were evaluated."""
    for pert, suite in dict.fromkeys((r.get("perturbation", "none"), r["suite"]) for r in rows):
        yield pert, suite, [r for r in rows if r["suite"] == suite and r.get("perturbation", "none") == pert]


def write_results(rows, opt, results_dir, figures=(), summary=(), thresholds=None):
    """results.csv, results.json and the report results.md in ``results_dir`` (plus summary.csv
    with several checkpoints); returns their paths.

    The Markdown report gathers the tables, the options, the checkpoints' SHA-256 and the figures.
    """
    from report import sha256_of
    ensure_writable_dir(results_dir, "--results_dir")
    flat = [{k: r.get(k) for k in RESULT_FIELDS} for r in rows]
    paths = {ext: os.path.join(results_dir, f"results.{ext}") for ext in ("csv", "json", "md")}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        w.writeheader()
        w.writerows(flat)
    if summary:
        paths["summary"] = os.path.join(results_dir, "summary.csv")
        with open(paths["summary"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(summary)
    hashes = {p: sha256_of(p) for p in opt.model_path}
    thresholds = thresholds or {}
    meta = {"model_path": opt.model_path, "model_sha256": hashes, "dataroot": opt.dataroot, "ema": opt.ema,
            "thresholds": {p: {"threshold": t, "source": src} for p, (t, src) in thresholds.items()},
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "metrics": "percent; ACC at threshold 0.5, AP from scikit-learn; summary: mean and sample standard "
                       "deviation (ddof=1) across checkpoints"}
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "results": flat, "summary": list(summary)}, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write("# NPR results\n\n" + "".join(f"Checkpoint: `{p}` (SHA-256 `{h}`)" + (" (moving-average weights)" if
                                                opt.ema else "") + "  \n" for p, h in hashes.items()) +
                f"Data: `{opt.dataroot}`  \nRun: {meta['time']}  \nMetrics in %. ACC, real ACC and fake ACC call "
                "an image fake when its probability is above 0.5 (the paper's rule)")
        used = {p: v for p, v in thresholds.items() if v[0] is not None}
        if used:
            f.write("; ACC@t, real@t and fake@t use the threshold t of each checkpoint:\n\n" +
                    "".join(f"- `{p}`: t = {t:.4f}, {src}\n" for p, (t, src) in used.items()))
        else:
            f.write(".\n")
        if summary:
            f.write(f"\n# Mean ± standard deviation over {len(opt.model_path)} checkpoints\n")
            for pert, suite, srows in groups(summary):
                title = suite if pert == "none" else f"{suite}, perturbation {pert}"
                f.write(f"\n## {title}\n\n" + markdown_table(
                    srows, summary_columns(srows), lambda r, k: summary_cell(r, k) if k in SUMMARY_METRICS else r.get(k)))
        for path in opt.model_path:
            if len(opt.model_path) > 1:
                f.write(f"\n# Checkpoint `{path}`\n")
            for pert, suite, srows in groups([r for r in rows if r.get("model_path") == path]):
                title = suite if pert == "none" else f"{suite}, perturbation {pert}"
                f.write(f"\n## {title}\n\n" + markdown_table(srows, shown_columns(srows, TABLE_COLUMNS),
                                                               lambda r, k: r.get(k)))
        if figures:
            f.write("\n## Figures\n\n" + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n"
                                                    for p in figures))
        f.write("\n## Options\n\n```\n" + "\n".join(f"{k}: {v}" for k, v in sorted(vars(opt).items())) + "\n```\n")
    return paths


def evaluate_checkpoint(model_path, suites, settings, opt, device):
    """(result rows with each suite's Mean row, (threshold, its source)) of one checkpoint over
    every suite and perturbation."""
    model = prepare_model(load_detector(model_path, device=device, ema=opt.ema), device,
                          channels_last=not opt.no_channels_last, fold_bn=not opt.no_fold_bn,
                          compile_model=opt.compile)
    threshold, source = eval_threshold(opt, model, device)
    log.info("Checkpoint %s%s on %s%s", model_path, " (moving-average weights)" if opt.ema else "", device,
             f"; threshold for ACC@t: {threshold:.4f} ({source})" if threshold is not None else "")
    out = []
    for perturb in settings:
        for suite, path in suites:
            rows, absent = evaluate_suite(model, suite, path, device, opt, perturb=perturb, threshold=threshold)
            if absent and perturb is None:
                log.info("%s: generators not found under %s (skipped): %s", suite.name, path, ", ".join(absent))
            if not rows:
                continue
            pre = "no resize" if not suite.resize or opt.no_resize else f"resize {opt.loadSize}"
            pre += ", no crop" if not suite.crop or opt.no_crop else f", centre crop {opt.cropSize}"
            if perturb is not None:
                pre = f"perturbation {perturb.name}; " + pre
            log.info("\n%s (%s; %s)%s\n%s", suite.name, path, pre, f" - {suite.note}" if suite.note else "",
                     suite_table(rows, suite.name))
            out += rows + [mean_row(rows, suite.name)]
    for r in out:
        r["model_path"] = model_path
        r["threshold"] = threshold
    return out, (threshold, source)


def main(argv=None):
    opt = parse_options(argv)
    setup_logging()
    set_numerics(tf32=opt.tf32)
    if opt.mini:
        from data.mini import build_mini
        log.info("No --dataroot given: evaluating on the built-in NPR-mini benchmark (%s)", MINI_ROOT)
        build_mini(MINI_ROOT, rebuild=opt.rebuild)
    suites, missing = resolve_suites(opt.dataroot, opt.suites)
    if missing:
        log.info("Suites not found under %s (skipped): %s", opt.dataroot, ", ".join(missing))
    if not suites:
        raise UserError(f"no suite found under --dataroot '{opt.dataroot}'; expected folders such as "
                        f"{', '.join(s.dirs[0] for s in SUITES[:3])}, or generator folders with 0_real/1_fake")
    device = select_device(opt.gpu_ids)
    settings = [None] + [p for p in parse_perturbations(opt.perturb) if p.steps] if opt.perturb else [None]
    all_rows, thresholds = [], {}
    for model_path in opt.model_path:
        rows, thresholds[model_path] = evaluate_checkpoint(model_path, suites, settings, opt, device)
        all_rows += rows
    if not all_rows:
        raise UserError("no generator folders found in the selected suites; nothing was evaluated")
    summary = summarize_checkpoints(all_rows) if len(opt.model_path) > 1 else []
    for pert, suite, srows in groups(summary):
        log.info("\n%s%s: mean ± sd over %d checkpoints\n%s", suite, "" if pert == "none" else f", perturbation {pert}",
                 len(opt.model_path), summary_table(srows))
    figures = []
    if opt.plots:
        from report import make_figures
        first = [r for r in all_rows if r["generator"] != "Mean" and r["model_path"] == opt.model_path[0]]
        figures = make_figures(first, opt.results_dir)
        log.info("Figures (of %s): %s", opt.model_path[0], ", ".join(figures))
    paths = write_results(all_rows, opt, opt.results_dir, figures, summary, thresholds)
    with open(os.path.join(opt.results_dir, "opt.txt"), "w") as f:
        print_options(opt, file=f)
    log.info("Results written to %s", ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
