"""Score your own images with an NPR checkpoint.

    python predict.py photos/ 'more/*.jpg' one.png --model_path NPR.pth
    python predict.py img.png --model_path NPR.pth --visualize out/   # image | artifact map | probability
    python predict.py scraped/ --model_path NPR.pth --shard 2/4       # the second quarter (one process each)

Pixels are kept as they are by default (NPR reads pixel-level traces); ``--resize`` applies
the reference's resize to loadSize x loadSize first. Images go through the evaluation loader
of ``test.py`` (batches of equal sizes, worker processes) via ``engine.score_files``, the path
of the notebook API's ``predict_proba`` and of ``demo.py``. Rows are appended to
``<output>.csv`` / ``<output>.jsonl`` as batches finish; running the same command again after a
crash scores only what is missing, whatever state the files were left in; a second run on the
same ``--output`` is refused while the first holds its lock (``prediction_store``).
``<output>.json`` gets every prediction when the run completes.
"""
import glob
import os
import sys

from tqdm import tqdm

from data.discovery import IMG_EXTENSIONS, FolderScan, scan_images
from data.images import SKIP_REASONS, ImageRule
from data.loaders import default_workers
from data.transforms import EvalTransform
from engine import EvalConfig, eval_threshold, score_files
from networks import load_for_evaluation
from options import parse_predict_args
from prediction_store import PredictionFiles, claim_output, merge_shards, shard_name, shard_paths
from figures import ArtifactFigures
from devices import keep_freed_memory, select_device, set_numerics
from distributed import launch_env
from files import check_output
from util import Interrupted, log, printable, run_cli, setup_logging, UserError

LIST_AT_MOST = 50  # rows printed to the terminal without --list


def expand_inputs(inputs):
    """Files, folders and glob patterns -> image paths in the order given (a folder's and a
    pattern's sorted; a folder a pattern matches is searched as a folder given by name), each
    file once however it is spelled or reached (``a.png``, ``./a.png``, ``shoots/**``). Entries
    that are not regular files (a FIFO, a device, a link to one) and folders that cannot be
    read are named in one warning and left out, never opened."""
    found = FolderScan()
    for item in inputs:
        explicit = os.path.lexists(item)
        matches = [item] if explicit else sorted(glob.glob(item, recursive=True))
        if not matches:
            raise UserError(f"'{item}' is not a file, a folder or a glob pattern that matches anything")
        for m in matches:
            if os.path.isdir(m):  # a folder given or matched ('shoots/*'): its images, as a folder given by name
                found.add(scan_images(m))
                continue
            if not (explicit or m.lower().endswith(IMG_EXTENSIONS)):
                continue
            found.add_image(m)
    line = found.skipped_line("the inputs")
    if line:
        log.warning(line)
    once = {}
    for p in found.images:
        once.setdefault(os.path.normpath(p), p)
    return list(once.values())


def shard_of(shard):
    """(k, n) from --shard k/n, or from torchrun's RANK / WORLD_SIZE; None for a single process."""
    if shard is not None:
        return shard
    rank, world, _ = launch_env()
    return (rank + 1, world) if world > 1 else None


def print_rows(files):
    rows = list(files.rows())
    if not rows:
        return
    width = max(len(printable(r["path"])) for r in rows)
    print(f"{'path'.ljust(width)}  P(fake)  verdict")
    for r in rows:
        p = "   -   " if r["prob_fake"] is None else f"{r['prob_fake']:.4f} "
        print(f"{printable(r['path']).ljust(width)}  {p}  {r['verdict']}")


def main(argv=None):
    args = parse_predict_args(argv)
    keep_freed_memory()  # glibc keeps freed memory for the next batch (docs/speed.md)
    setup_logging()
    paths = expand_inputs(args.inputs)
    if args.visualize:  # its figures are outputs: scored, they would change the inputs of every rerun
        figures = os.path.join(os.path.realpath(args.visualize), "")
        kept = [p for p in paths if not os.path.realpath(p).startswith(figures)]
        if len(kept) < len(paths):
            log.info("Leaving out %d image(s) in the --visualize folder %s", len(paths) - len(kept), args.visualize)
        paths = kept
    if not paths:
        raise UserError("no images found in the given inputs")
    shard = shard_of(args.shard)
    mine = shard_paths(paths, *shard) if shard else paths
    out = shard_name(args.output, *shard) if shard else args.output
    # before the model loads: a wrong --output or --visualize, or a second run, is one line at once
    if args.visualize:
        check_output(args.visualize, "--visualize", folder=True)
    with claim_output(out, args.output if shard else None):
        return scan(args, paths, shard, mine, out)


def scan(args, paths, shard, mine, out):
    under_torchrun = shard and args.shard is None and "LOCAL_RANK" in os.environ
    gpu_ids = launch_env()[2] if under_torchrun and args.gpu_ids != "-1" else args.gpu_ids
    device = select_device(gpu_ids)
    set_numerics()  # float32 on CUDA (no TF32), as the reference computed
    model, stored, sha256 = load_for_evaluation(args.model_path, device, args.ema_weights)
    transform = EvalTransform(args.loadSize, args.loadSize, resize=args.resize, crop=False)
    cfg = EvalConfig(device=device, batch_size=args.batch_size, num_workers=default_workers(args.num_threads, device),
                     images=ImageRule(args.strict_images, args.skip_truncated))
    threshold, source, _ = eval_threshold(model, stored, transform, cfg, args.threshold, args.calibrate_real,
                                          args.target_fpr)
    log.info("Verdict: fake when P(fake) > %.4f (%s)", threshold, source)
    settings = {"model": sha256, "ema": args.ema_weights, "threshold": threshold,
                "resize": args.resize, "loadSize": args.loadSize if args.resize else None,
                "skip_truncated": args.skip_truncated}
    info = {"model_path": args.model_path, "model_sha256": sha256,
            **{k: settings[k] for k in ("ema", "threshold", "resize")}, "threshold_source": source}
    files = PredictionFiles(out, settings, mine, paths if shard else None, shard)
    done = files.open(args.overwrite)
    if done:
        log.info("Resuming %s: %d of %d images already scored", files.jsonl, done, len(mine))
    figure = ArtifactFigures(args.visualize, model.operator) if args.visualize else None
    first = ((shard[0] - 1) * len(paths) // shard[1] if shard else 0) + done  # figure numbers: input positions
    bar = tqdm(total=len(mine), initial=done, desc="scoring", unit="img", disable=None)
    again = "the same command again" if not args.overwrite else "the command again without --overwrite"
    try:
        for row in score_files(model, mine[done:], transform, threshold, cfg, figure, first):
            files.write([row])
            done += 1
            bar.update(1)
        files.finish(info)
    except KeyboardInterrupt:
        raise Interrupted(f"{done} of {len(mine)} images scored, kept in {files.jsonl}; run {again} to score the "
                          "rest") from None
    except OSError as e:  # a full disk, a quota: the rows written so far are kept, a cut last one is scored again
        raise UserError(f"cannot write the results {out}.* ({e.strerror or e}): {done} of {len(mine)} images scored, "
                        f"kept in {files.jsonl}; free some space and run {again} to score the rest") from None
    finally:
        bar.close()
        files.close()
    if args.list or len(mine) <= LIST_AT_MOST:
        print_rows(files)
    c = files.counts
    skipped = sum(c.get(why, 0) for why in SKIP_REASONS)
    print(f"{len(mine) - skipped} images scored ({c.get('truncated', 0)} of them truncated), {skipped} skipped "
          f"({', '.join(f'{c[why]} {why}' for why in SKIP_REASONS if c.get(why)) or 'none'}): {c.get('fake', 0)} "
          f"fake, {c.get('real', 0)} real at {threshold:.4f}")
    print(f"Wrote {out}.csv, {out}.jsonl and {out}.json" + (f"; figures in {args.visualize}" if args.visualize else ""))
    if shard:
        _, state = merge_shards(args.output, settings, paths, info, shard[1])
        print(f"Shard {shard[0]} of {shard[1]} done; {state}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
