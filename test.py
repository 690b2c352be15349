"""Evaluate a checkpoint on the benchmark: per-generator ACC / AP tables with a Mean row per suite.

    python test.py                                            # NPR-mini with the mini checkpoint
    python test.py --dataroot ./datasets --model_path NPR.pth # every known suite found there
    python test.py --dataroot ./datasets --model_path NPR.pth --suites ForenSynths,GenImage

``--dataroot`` holds the suite folders (names in ``data/benchmarks.py``, matched
case-insensitively). A folder there that is not a known suite is evaluated as a custom suite
(every generator folder under it, no resize, no crop). Results go to ``--results_dir`` as
CSV, JSON and Markdown.
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
from util import UserError, ensure_writable_dir, log, run_cli, select_device, setup_logging
from validate import TABLE_COLUMNS, evaluate_suite, mean_row, prepare_model, suite_table

MINI_CHECKPOINT = "checkpoints/npr-mini/model_epoch_last.pth"
# The paper's columns first; "perturbation" (none, or e.g. jpeg:75) sits at the end so the clean
# table's layout does not depend on whether --perturb was given.
RESULT_FIELDS = ["suite", "generator", "acc", "ap", "r_acc", "f_acc", "auc", "best_acc", "best_threshold",
                 "n_real", "n_fake", "n_images", "n_scored", "n_skipped", "paper_acc", "paper_ap", "perturbation",
                 "seconds", "folder"]


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
            opt.model_path = MINI_CHECKPOINT
            if not os.path.isfile(MINI_CHECKPOINT):
                raise UserError(f"no --model_path given and no mini checkpoint at {MINI_CHECKPOINT}; "
                                "run `python train.py` first, or pass --model_path")
    if opt.model_path is None:
        raise UserError("--model_path is required: the checkpoint to evaluate (e.g. NPR.pth)")
    return check_test(opt)


def resolve_suites(dataroot, wanted):
    """[(suite, folder)] to evaluate and the names of requested known suites that are absent."""
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
    else:
        missing = [s.name for s in SUITES if s.name not in {f.name for f, _ in found} and s.name != "NPR-mini"]
    return found, missing


def write_results(rows, opt, results_dir, figures=()):
    """results.csv, results.json and the report results.md in ``results_dir``; returns their paths.

    The Markdown report gathers the tables, the options, the checkpoint's SHA-256 and the figures.
    """
    from report import sha256_of
    ensure_writable_dir(results_dir, "--results_dir")
    flat = [{k: r.get(k) for k in RESULT_FIELDS} for r in rows]
    paths = {ext: os.path.join(results_dir, f"results.{ext}") for ext in ("csv", "json", "md")}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        w.writeheader()
        w.writerows(flat)
    meta = {"model_path": opt.model_path, "model_sha256": sha256_of(opt.model_path), "dataroot": opt.dataroot,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "metrics": "percent; ACC at threshold 0.5, AP from scikit-learn"}
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "results": flat}, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(f"# NPR results\n\nCheckpoint: `{opt.model_path}` (SHA-256 `{meta['model_sha256']}`)  \n"
                f"Data: `{opt.dataroot}`  \nRun: {meta['time']}  \nMetrics in %.\n")
        for pert, suite in dict.fromkeys((r.get("perturbation", "none"), r["suite"]) for r in rows):
            srows = [r for r in rows if r["suite"] == suite and r.get("perturbation", "none") == pert]
            title = suite if pert == "none" else f"{suite}, perturbation {pert}"
            f.write(f"\n## {title}\n\n| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |\n|" +
                    "---|" * len(TABLE_COLUMNS) + "\n")
            for r in srows:
                cells = [r.get(k) for k, _ in TABLE_COLUMNS]
                f.write("| " + " | ".join("-" if c is None else f"{c:.1f}" if isinstance(c, float) else str(c)
                                          for c in cells) + " |\n")
        if figures:
            f.write("\n## Figures\n\n" + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n"
                                                    for p in figures))
        f.write("\n## Options\n\n```\n" + "\n".join(f"{k}: {v}" for k, v in sorted(vars(opt).items())) + "\n```\n")
    return paths


def main(argv=None):
    opt = parse_options(argv)
    setup_logging()
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
    model = prepare_model(load_detector(opt.model_path, device=device), device,
                          channels_last=not opt.no_channels_last, fold_bn=not opt.no_fold_bn,
                          compile_model=opt.compile)
    log.info("Checkpoint %s on %s", opt.model_path, device)
    settings = [None] + [p for p in parse_perturbations(opt.perturb) if p.steps] if opt.perturb else [None]
    all_rows = []
    for perturb in settings:
        for suite, path in suites:
            rows, absent = evaluate_suite(model, suite, path, device, opt, perturb=perturb)
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
            all_rows += rows + [mean_row(rows, suite.name)]
    if not all_rows:
        raise UserError("no generator folders found in the selected suites; nothing was evaluated")
    figures = []
    if opt.plots:
        from report import make_figures
        figures = make_figures([r for r in all_rows if r["generator"] != "Mean"], opt.results_dir)
        log.info("Figures: %s", ", ".join(figures))
    paths = write_results(all_rows, opt, opt.results_dir, figures)
    with open(os.path.join(opt.results_dir, "opt.txt"), "w") as f:
        print_options(opt, file=f)
    log.info("Results written to %s", ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
