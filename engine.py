"""The loops: running a model over images (evaluation, validation, suites) and one training epoch.

Scripts resolve their command-line arguments and call these functions with plain values and
small objects: ``EvalConfig`` (how evaluation runs), and for training a ``TrainState`` (where
training is: ``networks.checkpoint`` stores it) and a ``StepContext`` (the fixed parts of a step,
with its ``StepConfig``). Nothing here reads the command line.
"""
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from data.benchmarks import find_child, locate_generator
from data.discovery import DatasetLayoutError, list_images, make_samples
from data.images import image_name, ImageRule
from data.loaders import batches, default_workers, make_eval_loader
from data.transforms import EvalTransform, normalize_batch
from figures import figure_pixels
from metrics import compute_metrics, decide_threshold, metric_columns
from networks import EvalConfig, score_images
from networks.detector import artifact_map, scored_batch
from recipe import set_lr
from devices import AMP_DTYPE
from distributed import sync_step, unwrap
from util import UserError, log

# ----------------------------------------------------------------------------- evaluation

class LoaderScores(NamedTuple):
    """What ``predict_loader`` saw: labels and probabilities of the scored images (``scored``:
    their dataset indices, in the same order), and the dataset indices of the images skipped
    (``why``: index -> a ``SKIP_REASONS`` key) and of the truncated ones that were scored."""
    y_true: np.ndarray
    y_prob: np.ndarray
    skipped: list
    truncated: list
    scored: list
    why: dict


@torch.inference_mode()
def predict_loader(model, loader, cfg, bar=None):
    """Run ``model`` over ``loader``; a ``LoaderScores`` in loader order. An image the model
    fails on is reported through ``cfg.images`` and counted as skipped ("model error")."""
    labels, probs, skipped, truncated, scored, why = [], [], [], [], [], {}
    samples = loader.dataset.samples
    for batch in batches(loader):
        p = scored_batch(model, batch, cfg.images, lambda i: image_name(samples[i][0]), cfg.channels_last, cfg.amp)
        failed = {int(batch.indices[j]) for j, v in enumerate(p) if v is None}
        skipped += list(batch.skipped) + sorted(failed)
        why.update(zip(batch.skipped, batch.skipped_why))
        why.update(dict.fromkeys(failed, "model error"))
        truncated += [i for i in batch.truncated if i not in failed]
        keep = [j for j, v in enumerate(p) if v is not None]
        if keep:
            probs.append(torch.tensor([p[j] for j in keep], dtype=torch.float32))
            labels.append(batch.labels[keep])
            scored += [int(batch.indices[j]) for j in keep]
        if bar is not None:
            bar.update(len(batch.labels) + len(batch.skipped))
    if not probs:
        return LoaderScores(np.zeros(0), np.zeros(0), skipped, truncated, scored, why)
    return LoaderScores(torch.cat(labels).numpy(), torch.cat(probs).numpy(), skipped, truncated, scored, why)


def eval_config(args, device, images=None):
    """The ``EvalConfig`` of a script's options (test.py, validate.py, train.py's validation)."""
    return EvalConfig(device=device, batch_size=args.batch_size, num_workers=default_workers(args.num_threads, device),
                      amp=args.amp, channels_last=not args.no_channels_last,
                      images=images or ImageRule(args.strict_images, args.skip_truncated))


def eval_loader(samples, transform, cfg):
    """The one evaluation loader: ``samples`` in order, batched (by size when needed)."""
    return make_eval_loader(samples, transform, cfg.batch_size, cfg.num_workers, cfg.device, cfg.images)


def predict_samples(model, samples, transform, cfg, bar=None):
    """``predict_loader`` over an evaluation loader of ``samples`` (``bar``: a tqdm bar to update)."""
    return predict_loader(model, eval_loader(samples, transform, cfg), cfg, bar)


def evaluate_folder(model, root, transform, cfg, classes=None, bar=None):
    """Metrics (``compute_metrics``) of ``model`` on the dataset folder ``root``, plus counts of
    images scored, skipped (unusable) and truncated (scored, as the reference does), the raw
    ``y_true`` / ``y_prob``, and ``images``: (path, label, status) of every image, the scored
    first (in the order of ``y_prob``; status 'scored' or 'truncated'), then the skipped (status
    a ``SKIP_REASONS`` key)."""
    samples = make_samples(root, classes)
    seen = predict_samples(model, samples, transform, cfg, bar)
    metrics = compute_metrics(seen.y_true, seen.y_prob)
    truncated = set(seen.truncated)
    images = [(samples[i][0], samples[i][1], "truncated" if i in truncated else "scored") for i in seen.scored] + \
        [(samples[i][0], samples[i][1], seen.why.get(i, "unreadable")) for i in seen.skipped]
    metrics.update(n_images=len(samples), n_scored=int(len(seen.y_true)), n_skipped=len(seen.skipped),
                   n_truncated=len(seen.truncated), y_true=seen.y_true, y_prob=seen.y_prob, images=images)
    return metrics


def eval_threshold(model, stored, transform, cfg, choice="auto", calibrate_real=None, target_fpr=0.05):
    """``metrics.decide_threshold`` for ``model`` and the threshold its checkpoint ``stored``
    (``load_for_evaluation``), with the calibration folder's images scored through the
    evaluation loader and ``transform``."""
    def score_reals(folder):
        samples = [(p, 0) for p in list_images(folder)]
        return predict_samples(model, samples, transform, cfg)[1] if samples else np.zeros(0)
    return decide_threshold(choice, stored, calibrate_real, target_fpr, score_reals)


def score_files(model, paths, transform, threshold, cfg=EvalConfig(), figure=None, first_number=0):
    """Yield one row per image file, in order, as batches finish (predict.py and demo.py): path,
    P(fake), verdict at ``threshold`` (a ``SKIP_REASONS`` key for a skipped file), truncated,
    the size the model saw and, with ``figure`` (``figures.ArtifactFigures``), the path of the
    figure it drew of the image and of ``model``'s artifact map, numbered from ``first_number``.
    Scores come from ``score_images`` with ``cfg``'s batching and rule."""
    scores = score_images(model, paths, transform, cfg, keep_pixels=figure is not None)
    for i, s in enumerate(scores, first_number):
        row = {"path": s.image, "prob_fake": s.prob, "verdict": s.skipped or ("fake" if s.prob > threshold else "real"),
               "truncated": s.truncated, "size": None, "figure": None}
        if s.prob is not None:
            row["size"] = f"{s.size[0]}x{s.size[1]}"
            if figure is not None:
                shown = figure_pixels(s.pixels, os.path.basename(s.image))
                row["figure"] = figure(i, os.path.basename(s.image), shown, artifact_map(model, shown[0]), s.prob,
                                       threshold)
        yield row


def suite_transform(suite, load_size=256, crop_size=224, no_resize=False, no_crop=False, center_crop=False,
                    perturb=None):
    """The evaluation transform of ``suite``: its own resize / crop, which ``no_resize`` /
    ``no_crop`` / ``center_crop`` override."""
    return EvalTransform(load_size, crop_size, resize=suite.resize and not no_resize,
                         crop=(suite.crop or center_crop) and not no_crop, perturb=perturb)


def evaluate_suite(model, suite, suite_dir, transform, cfg, threshold=None, show_bar=True):
    """Evaluate every generator of ``suite`` found under ``suite_dir``, each pre-processed by
    ``transform`` (``suite_transform``, the suite's own, or with a perturbation).

    Returns ``(rows, missing)``: one dict per generator (metrics in %, the paper's numbers,
    image counts; with a ``threshold``, also ACC / real ACC / fake ACC at it) and the names of
    generators whose folder is absent (skipped, not fatal). A folder without images is skipped
    with a warning.
    """
    rows, missing = [], []
    for gen in suite.generators:
        path = locate_generator(suite_dir, gen)
        if path is None:
            there = next(filter(os.path.isdir, (find_child(suite_dir, f) or "" for f in gen.folders)), None)
            if there:  # a folder by the generator's name, but no 0_real + 1_fake pair in it
                log.warning("%s/%s skipped: %s holds no folder pair 0_real and 1_fake (directly or in category "
                            "folders): both are needed", suite.name, gen.name, there)
            else:
                missing.append(gen.name)
            continue
        start = time.time()
        bar = tqdm(desc=f"{suite.name}/{gen.name}", unit="img", leave=False, disable=None if show_bar else True)
        try:
            m = evaluate_folder(model, path, transform, cfg, bar=bar)
        except DatasetLayoutError as e:  # an empty folder among 28: the others are still scored
            log.warning("%s/%s skipped: %s", suite.name, gen.name, e)
            continue
        finally:
            bar.close()
        perturb = transform.perturb
        row = {"suite": suite.name, "generator": gen.name, "folder": path, "in_mean": gen.in_mean,
               "preprocessing": transform.describe(),
               "perturbation": perturb.name if perturb is not None else "none",
               "steps": perturb.steps if perturb is not None else ()}
        row.update(metric_columns(m, threshold))
        row.update({k: m[k] for k in ("n_images", "n_scored", "n_skipped", "n_truncated", "images")})
        row.update(paper_acc=gen.paper_acc, paper_ap=gen.paper_ap, seconds=round(time.time() - start, 2))
        if not (m["n_real"] and m["n_fake"]):  # AP needs both classes; an ACC of one class is not the paper's
            row["in_mean"] = False
            log.warning("%s/%s: no %s image was scored, so its AP is undefined; the row is shown and left out of "
                        "the Mean", suite.name, gen.name, "real" if m["n_fake"] else "fake")
        rows.append(row)
    return rows, missing


def evaluate_samples(model, samples, transform, cfg, rank=0, world=1):
    """Validation metrics of ``model`` (already prepared for evaluation) on ``samples``; under
    DistributedDataParallel each rank scores a shard and the results are gathered.
    ``threshold`` is the one with the best balanced accuracy."""
    y_true, y_prob, skipped = predict_samples(model, samples[rank::world], transform, cfg)[:3]
    n_skipped = len(skipped)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (y_true, y_prob, n_skipped))
        y_true = np.concatenate([p[0] for p in parts])
        y_prob = np.concatenate([p[1] for p in parts])
        n_skipped = sum(p[2] for p in parts)
    m = compute_metrics(y_true, y_prob)
    return dict(m, n_skipped=n_skipped, threshold=m["balanced_threshold"])


# ----------------------------------------------------------------------------- training

class StopRequested(Exception):
    """SIGINT / SIGTERM arrived: the current step finished and the latest checkpoint was written."""

    def __init__(self, signum):
        self.signum = signum


class GracefulStop:
    """Turns the first SIGINT / SIGTERM into a flag checked after each step; a second one kills."""

    def __init__(self):
        self.signum = None

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum
        # Straight to the file descriptor: the handler may run while the logger is halfway
        # through a write, and Python's buffered streams refuse re-entrant writes.
        os.write(2, f"Signal {signal.Signals(signum).name} received: finishing the current step, then saving "
                    "the latest checkpoint (send it again to stop at once).\n".encode())


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What a training step does besides the update."""
    channels_last: bool = False  # --train_channels_last
    amp: bool = False            # float16 autocast with a GradScaler (CUDA only)
    loss_freq: int = 400         # log the loss every this many steps
    save_latest_freq: int = 2000  # save the latest checkpoint every this many steps
    latest_path: str = ""        # named in the error when the loss stops being finite
    schedule: object = None      # recipe.LRSchedule: its lr_at(epoch, step) is set before every step; None: the lr as it is


@dataclass(kw_only=True)
class StepContext:
    """The fixed parts of every training step: where it runs, what updates the weights, and
    who else is told (the moving average, TensorBoard, the other processes)."""
    device: torch.device
    optimizer: torch.optim.Optimizer
    loss_fn: object
    config: StepConfig = StepConfig()
    save: object = lambda which: None  # save("latest"): writes the checkpoint model_epoch_latest.pth
    stopper: GracefulStop = field(default_factory=GracefulStop)
    scaler: object = None        # torch.amp.GradScaler with --amp on CUDA
    ema: object = None           # networks.ema.EMA with --ema
    writer: object = None        # a TensorBoard SummaryWriter (rank 0)
    rank: int = 0
    world: int = 1


def train_one_epoch(model, loader, state, ctx):
    """One pass over ``loader`` (``state.epoch``); ``state``'s counters advance step by step.
    Returns the number of images skipped. Raises ``StopRequested`` after saving when a signal
    arrived, and ``UserError`` when the loss is not finite (before the step is taken)."""
    model.train()
    cfg, optimizer, device, epoch = ctx.config, ctx.optimizer, ctx.device, state.epoch
    use_amp = cfg.amp and device.type == "cuda"
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if ctx.rank == 0 else True)
    skipped = 0
    for batch in bar:
        skipped += len(batch.skipped)
        if len(batch.labels) == 0:
            if ctx.world > 1:  # every rank must take every step together
                raise UserError("every image of one batch was unreadable; under torchrun remove the files named "
                                "in the warnings above (or find them with --strict_images) and resume")
            continue
        if cfg.schedule is not None:
            set_lr(optimizer, cfg.schedule.lr_at(epoch, state.step_in_epoch))
        x = batch.images.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=use_amp):
            logits = model(normalize_batch(x)).squeeze(1)
        loss = ctx.loss_fn(logits.float(), y)
        loss_value, stop = sync_step(loss, ctx.stopper, ctx.world)
        if not math.isfinite(loss_value):
            raise UserError(f"the loss became {loss_value} at epoch {epoch}, step {state.total_steps}; "
                            f"training stopped and the last good checkpoint ({cfg.latest_path}) "
                            "was kept; try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:  # --amp: float16 gradients are scaled to stay representable
            ctx.scaler.scale(loss).backward()
            ctx.scaler.step(optimizer)
            ctx.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ctx.ema is not None:
            ctx.ema.update(unwrap(model))
        state.total_steps += 1
        state.step_in_epoch += 1
        step = state.total_steps
        if step % cfg.loss_freq == 0:
            log.info("Train loss: %.4f at step: %d lr %.3g", loss_value, step, optimizer.param_groups[0]["lr"])
            if ctx.writer is not None:
                ctx.writer.add_scalar("train/loss", loss_value, step)
                ctx.writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        if step % cfg.save_latest_freq == 0:
            ctx.save("latest")
        if stop:
            ctx.save("latest")
            raise StopRequested(ctx.stopper.signum or signal.SIGTERM)
        bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    return skipped
