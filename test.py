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
import os
import sys

from bootstrap import RESAMPLES, add_intervals, comparison_rows
from data.benchmarks import SUITES, find_suites
from data.loaders import default_workers
from data.perturb import parse_perturbations
from data.transforms import EvalTransform
from engine import eval_config, eval_threshold, evaluate_suite, suite_transform
from metrics import mean_row, summarize_checkpoints
from networks import load_detector, load_for_evaluation
from options import MINI_ROOT, parse_test_args, print_options
from figures import make_figures
from report import comparison_table, groups, suite_table, summary_table, write_comparison, write_results
from scores import NAME as SCORES_NAME
from scores import checkpoints_of, read_scores, score_rows, shared_images
from data.mini import build_mini
from data.verification import format_report
from data.verification import verify as verify_suites
from devices import keep_freed_memory, select_device, set_numerics
from files import atomic_file, check_output, staged_folder, write_json_atomically, writing
from util import Interrupted, log, run_cli, setup_logging, UserError


def evaluate_checkpoint(model_path, suites, perturbations, args, cfg):
    """(result rows with each suite's Mean row, the ``metrics.Threshold`` of ACC@t) of one
    checkpoint over every suite and perturbation."""
    model, stored, sha256 = load_for_evaluation(model_path, cfg.device, args.ema_weights,
                                                channels_last=cfg.channels_last, fold_bn=not args.no_fold_bn,
                                                compile_model=args.compile)
    # Calibration images go through the evaluation transform of the flags (no suite's own).
    calibration = EvalTransform(args.loadSize, args.cropSize, resize=not args.no_resize, crop=not args.no_crop)
    decided = eval_threshold(model, stored, calibration, cfg, args.threshold, args.calibrate_real, args.target_fpr)
    threshold = None if decided.is_paper_rule else decided.value  # the paper's 0.5 is the ACC column already
    log.info("Checkpoint %s%s on %s%s", model_path, " (moving-average weights)" if args.ema_weights else "",
             cfg.device, f"; threshold for ACC@t: {threshold:.4f} ({decided.source})" if threshold is not None else "")
    out = []
    for perturb in perturbations:
        for suite, path in suites:
            transform = suite_transform(suite, args.loadSize, args.cropSize, args.no_resize, args.no_crop,
                                        args.center_crop, perturb)
            rows, absent = evaluate_suite(model, suite, path, transform, cfg, threshold)
            if absent and perturb is None:
                log.info("%s: generators not found under %s (skipped): %s", suite.name, path, ", ".join(absent))
            if not rows:
                continue
            mean = mean_row(rows, suite.name)
            add_intervals(rows, mean, args.bootstrap, args.bootstrap_seed)
            log.info("\n%s (%s; %s)%s\n%s", suite.name, path, rows[0]["preprocessing"],
                     f" - {suite.note}" if suite.note else "", suite_table(rows, suite.name, mean))
            out += rows + [mean]
    for r in out:
        r.update(model_path=model_path, model_sha256=sha256)
    return out, decided


def compare_detectors(args, rows):
    """``--compare``: the two groups' score rows (this run's ``rows`` for checkpoints, scores files
    read as they are), compared per generator; prints the table, writes compare.csv / .json."""
    sides, in_mean = [], {}
    for group in args.compare:
        members = []
        for item in group:
            found, flags = checkpoints_of(read_scores(item) if item.endswith(SCORES_NAME) else list(
                score_rows([r for r in rows if r["model_path"] == item], args.dataroot)))
            members += list(found.values())
            in_mean.update(flags)
        sides.append(members)
    shared, notes = shared_images(*sides, in_mean)
    for note in notes:
        log.info("--compare: %s", note)
    table = comparison_rows(shared, args.bootstrap or RESAMPLES, args.bootstrap_seed)
    names = [" ".join(g) for g in args.compare]
    log.info("\nB - A, per generator: A = %s; B = %s (%d and %d checkpoint(s)); 95%% intervals and p-values from a "
             "paired bootstrap over the images both scored%s; * holds after Holm's correction over the generators\n%s",
             names[0], names[1], len(sides[0]), len(sides[1]),
             " and the checkpoints of each group" if max(map(len, sides)) > 1 else "", comparison_table(table))
    meta = {"a": args.compare[0], "b": args.compare[1], "checkpoints": [len(s) for s in sides], "notes": notes,
            "bootstrap": {"replicates": args.bootstrap or RESAMPLES, "seed": args.bootstrap_seed},
            "method": "B - A; paired Bayesian bootstrap over images within each class (and Dirichlet weights over "
                      "each group's checkpoints); p two-sided; holds: Holm-adjusted p <= 0.05 over the generators"}
    with writing(f"the comparison in {args.results_dir}", "--results_dir"):
        paths = write_comparison(table, args.results_dir, meta)
    log.info("Comparison written to %s", ", ".join(paths.values()))


def main(argv=None):
    args = parse_test_args(argv)
    keep_freed_memory()  # glibc keeps freed memory for the next batch (docs/speed.md)
    perturbations = [None] + [p for p in parse_perturbations(args.perturb) if p.steps] if args.perturb else [None]
    setup_logging()
    set_numerics(tf32=args.tf32)
    check_output(args.results_dir, "--results_dir", folder=True)
    if args.compare and not args.model_path:  # scores files only: no model to run
        compare_detectors(args, [])
        return 0
    if args.mini:
        log.info("No --dataroot given: evaluating on the built-in NPR-mini benchmark (%s)", MINI_ROOT)
        build_mini(MINI_ROOT, rebuild=args.rebuild)
    suites, missing = find_suites(args.dataroot, args.suites)
    if missing:
        log.info("Suites not found under %s (skipped): %s", args.dataroot, ", ".join(missing))
    if not suites:
        raise UserError(f"no suite found under --dataroot '{args.dataroot}'; expected folders such as "
                        f"{', '.join(s.dirs[0] for s in SUITES[:3])}, or generator folders with 0_real/1_fake")
    if args.check_data:
        report = verify_suites(args.dataroot, [s.name for s, _ in suites], default_workers(args.num_threads, None))
        log.info("Data check (python -m tools.verify):\n%s", format_report(report))
        with writing(os.path.join(args.results_dir, "data_check.json"), "--results_dir"):
            write_json_atomically(report, os.path.join(args.results_dir, "data_check.json"))
    device = select_device(args.gpu_ids)
    cfg = eval_config(args, device)
    for model_path in args.model_path[1:]:  # a bad last checkpoint is one line now, not after the others are scored
        load_detector(model_path, "cpu", args.ema_weights)
    all_rows, thresholds = [], {}
    try:
        for model_path in args.model_path:
            rows, thresholds[model_path] = evaluate_checkpoint(model_path, suites, perturbations, args, cfg)
            all_rows += rows
    except KeyboardInterrupt:
        raise Interrupted(f"nothing written to {args.results_dir}: the results are written once every "
                          "suite is scored") from None
    if not all_rows:
        raise UserError("no generator folders found in the selected suites; nothing was evaluated")
    summary = summarize_checkpoints(all_rows) if len(args.model_path) > 1 else []
    for pert, suite, srows in groups(summary):
        log.info("\n%s%s: mean ± sd over %d checkpoints\n%s", suite, "" if pert == "none" else f", perturbation {pert}",
                 len(args.model_path), summary_table(srows))
    # All of them or none: a disk that fills leaves the previous results whole.
    with writing(f"the results in {args.results_dir}", "--results_dir", "; the results there are as they were"), \
            staged_folder(args.results_dir) as stage:
        figures = []
        if args.plots:
            first = [r for r in all_rows if r["generator"] != "Mean" and r["model_path"] == args.model_path[0]]
            figures = make_figures(first, stage)
            log.info("Figures (of %s): %s", args.model_path[0], ", ".join(os.path.basename(f) for f in figures))
        paths = write_results(all_rows, stage, args.model_path, args.dataroot, vars(args), args.ema_weights,
                              figures, summary, thresholds, (args.bootstrap, args.bootstrap_seed))
        with atomic_file(os.path.join(stage, "opt.txt")) as f:
            print_options(args, file=f)
    paths = {k: os.path.join(args.results_dir, os.path.basename(p)) for k, p in paths.items()}
    log.info("Results written to %s", ", ".join(paths.values()))
    if args.compare:
        compare_detectors(args, all_rows)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
