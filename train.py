"""Train the NPR detector: the reference's ``train.py`` recipe (chuangchuangtan/NPR-DeepfakeDetection).

    python train.py                      # the built-in mini benchmark (built on first use)
    python train.py --dataroot ./datasets/ForenSynths_train_val --classes car,cat,chair,horse \
        --name 4class-resnet-car-cat-chair-horse --batch_size 32 --lr 0.0002 --delr_freq 10 --niter 50

Read top to bottom: ``main`` sets up data, model and optimiser, resumes if asked, then runs
``engine.train_one_epoch`` and a validation per epoch. Everything needed to resume lives in
one checkpoint dict (see ``checkpoint_state``). ``torchrun --nproc_per_node=N train.py ...`` trains
with DistributedDataParallel; ``--batch_size`` is then the global batch, split over processes.
"""
import contextlib
import datetime
import os
import random
import shlex
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

from data.benchmarks import suite_by_name
from data.cache import cached_train_dataset
from data.discovery import make_samples
from data.images import ImageRule
from data.loaders import BinaryImageDataset, EpochSampler, default_workers, make_train_loader
from data.transforms import EvalTransform, TrainTransform
from engine import (EvalConfig, GracefulStop, StepConfig, StepContext, StopRequested, TrainState, eval_loader,
                    evaluate_samples, evaluate_suite, ignore_signals_in_worker, suite_transform, train_one_epoch,
                    unwrap)
from networks import (CheckpointError, extract_state_dict, load_checkpoint, load_state_dict_strict, prepare_model, resnet50,
                      save_checkpoint)
from networks.checkpoint import resume_problem
from networks.ema import EMA, empty_state as empty_ema_state
from options import MINI_RECIPE, MINI_ROOT, parse_train_args, print_options
from recipe import LRSchedule, build_loss, build_optimizer, set_lr
from report import suite_table
from data.mini import build_mini
from util import (RunLock, UserError, atomic_file, ensure_writable_dir, fingerprint, keep_freed_memory, launch_env, log,
                  one_line, run_cli, seed_everything, select_device, set_numerics, setup_logging)


# ----------------------------------------------------------------------------- setup

def init_distributed(gpu_ids, batch_size):
    """(rank, world_size, device). Under torchrun: NCCL on CUDA, gloo on the CPU (a process group
    even for one process, so that a one-GPU torchrun checks the launch a multi-GPU run needs)."""
    rank, world, local_rank = launch_env(rendezvous=True)
    if "RANK" not in os.environ:  # not started by torchrun
        return 0, 1, select_device(gpu_ids)
    use_cuda = torch.cuda.is_available() and str(gpu_ids).strip() != "-1"
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank}: only {torch.cuda.device_count()} CUDA device(s) visible; start at most "
                        "that many processes per node (torchrun --nproc_per_node), or --gpu_ids -1 for the CPU")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    # Long timeout: rank 0 alone builds --cache_dir and runs the final test while the others wait.
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=3))
    if batch_size % world:
        raise UserError(f"--batch_size {batch_size} is the global batch and must divide by the {world} processes")
    return rank, world, device


def sync_batchnorm(model, world, device):
    """(model, what was done): with several CUDA processes, BatchNorm becomes SyncBatchNorm, so that
    N processes with global batch B normalise over B images, as the paper's one GPU does."""
    if world > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), \
            f"--sync_bn: BatchNorm statistics over the global batch of all {world} processes"
    if world == 1:
        return model, "--sync_bn does not apply: one process already normalises over the whole batch"
    return model, (f"--sync_bn does not apply on the CPU (PyTorch's SyncBatchNorm runs on CUDA only): each of the "
                   f"{world} processes normalises over its own share of the batch")


def samples_done(state, batch_size, world):
    """How many of its samples this process skips in the epoch being resumed: each of the
    ``state.step_in_epoch`` steps took ``batch_size`` images (the global batch), so the first
    ``step_in_epoch * batch_size`` positions of the epoch's order are done, whatever the number
    of processes that took them (``data.loaders.EpochSampler`` deals positions round-robin)."""
    return state.step_in_epoch * (batch_size // world)


def make_train_transform(args):
    """The training transform of the arguments (the reference's, plus the options beyond the paper)."""
    return TrainTransform(load_size=args.loadSize, crop_size=args.cropSize, resize=not args.no_resize,
                          flip=not args.no_flip, interps=args.rz_interp, blur_prob=args.blur_prob,
                          blur_sig=args.blur_sig, jpg_prob=args.jpg_prob, jpg_method=args.jpg_method,
                          jpg_qual=args.jpg_qual, rotate=args.rotate, color_jitter=args.color_jitter,
                          mask_prob=args.mask_prob, mask_ratio=args.mask_ratio, mask_patch=args.mask_patch)


def train_dataset(samples, transform, rule, cache_dir=None, cache_workers=0, rank=0, world=1):
    """The training images, decoded per step, or read from the ``cache_dir`` store (built by rank 0)."""
    if not cache_dir:
        return BinaryImageDataset(samples, transform, rule)
    if rank == 0:
        dataset = cached_train_dataset(cache_dir, samples, transform, rule, cache_workers)
    if world > 1:
        dist.barrier()
    if rank != 0:
        dataset = cached_train_dataset(cache_dir, samples, transform, rule, build=False)
    return dataset


def checkpoint_path(args, which):
    return os.path.join(args.checkpoints_dir, args.name, f"model_epoch_{which}.pth")


def run_checkpoints(args):
    """The ``--epoch`` values of the checkpoints in the run's folder, newest first."""
    folder = os.path.join(args.checkpoints_dir, args.name)
    found = [(os.path.getmtime(os.path.join(folder, f)), f[len("model_epoch_"):-len(".pth")])
             for f in os.listdir(folder) if f.startswith("model_epoch_") and f.endswith(".pth")
             and os.path.isfile(os.path.join(folder, f))] if os.path.isdir(folder) else []
    return [w for _, w in sorted(found, reverse=True)]


def rng_state():
    return {"python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def checkpoint_state(model, optimizer, args, state, scaler=None, ema=None):
    """The one dict that resuming, evaluation and notebooks read: the weights, the optimiser,
    the ``TrainState`` (its ``threshold`` is the decision threshold with the best balanced
    accuracy on the last validation; ``networks.ema`` keys the moving-average weights and
    their threshold), the options and the random state. ``lr`` is the lr of the next step."""
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
               if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), **state.as_checkpoint(),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "lr": optimizer.param_groups[0]["lr"], "opt": options, "rng": rng_state(), "arch": "npr_resnet50",
            "operator": unwrap(model).operator, "scaler": scaler.state_dict() if scaler is not None else None,
            **(ema.state() if ema is not None else empty_ema_state())}


def training_list(samples):
    """``TrainState.train_images`` of a list of training samples."""
    return f"{len(samples)}:{fingerprint([path for path, _ in samples])}"


def check_resume_position(args, ckpt, state, images, n_images, refuse):
    """A run stopped inside an epoch goes on from the image it stopped at, counted in batches of
    the batch size it ran with: another ``--batch_size`` is refused, and a training list that
    changed since (images added or removed) is said, since the rest of the epoch can no longer
    see each image once. A position no run reaches (past --niter, past the end of an epoch of the
    same list) is ``refuse``d."""
    if state.epoch > args.niter:
        refuse(f"it is at epoch {state.epoch}, past --niter {args.niter} (raise --niter to train on)")
    before = (ckpt.get("opt") or {}).get("batch_size", args.batch_size)
    if state.step_in_epoch and before != args.batch_size:
        ends = [w for w in run_checkpoints(args) if w.isdigit()]
        raise UserError(f"--batch_size {args.batch_size}: the run stopped {state.step_in_epoch} steps into epoch "
                        f"{state.epoch} with batches of {before}; resume with --batch_size {before}"
                        + (f", or from the end of an epoch with --epoch {ends[0]}" if ends else ""))
    if state.train_images in (None, images) and state.step_in_epoch * args.batch_size >= max(n_images, 1):
        refuse(f"it is {state.step_in_epoch} steps into epoch {state.epoch}, where an epoch of its {n_images} "
               f"images has {-(-n_images // args.batch_size)} steps of {args.batch_size}")
    if state.train_images not in (None, images):
        log.warning("The training images changed since %s (%s images then, %s now)%s", checkpoint_path(args, args.epoch),
                    state.train_images.split(":")[0], images.split(":")[0],
                    f": the rest of epoch {state.epoch} follows a new order, so some of its images may be seen twice "
                    "or not at all" if state.step_in_epoch else "")


def resume(args, model, optimizer, scaler, ema, images, n_images):
    """Load the training state of ``--epoch`` into the objects; returns its ``TrainState``.
    ``images``: ``training_list`` of this run's ``n_images`` samples (``check_resume_position``).
    A checkpoint that cannot be resumed is one line naming what is wrong and the run's others."""
    path = checkpoint_path(args, args.epoch)
    if not os.path.isfile(path):
        raise UserError(f"--continue_train: no checkpoint '{path}' to resume from; "
                        "check --name / --checkpoints_dir / --epoch, or drop --continue_train")
    others = [w for w in run_checkpoints(args) if w != str(args.epoch)]
    elsewhere = f"; resume from another checkpoint of this run with --epoch ({', '.join(others)})" if others else ""

    def refuse(why):
        raise CheckpointError(f"checkpoint '{path}' cannot be resumed: {why}{elsewhere}")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{elsewhere}") from None
    if not isinstance(ckpt, dict) or ("optimizer" not in ckpt and "epoch" not in ckpt):
        raise UserError(f"'{path}' holds weights only, not a training state; it can be evaluated, not resumed")
    problem = resume_problem(ckpt, optimizer)
    if problem:
        refuse(problem)
    load_state_dict_strict(model, extract_state_dict(ckpt), source=f"checkpoint '{path}'")
    state = TrainState.from_checkpoint(ckpt)
    check_resume_position(args, ckpt, state, images, n_images, refuse)
    try:  # what resume_problem does not foresee is still one line
        if not args.new_optim:
            optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load(ckpt)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        refuse(f"{type(e).__name__}: {one_line(e)[:200]}")
    log.info("Resuming from %s: epoch %d, step %d of the epoch, %d steps in all, lr %.3g",
             path, state.epoch, state.step_in_epoch, state.total_steps, optimizer.param_groups[0]["lr"])
    world, before = dist.get_world_size() if dist.is_initialized() else 1, ckpt.get("world_size", 1)
    if world != before:
        log.info("The checkpoint was written by %d process(es), this run has %d: the epoch goes on with the images "
                 "not seen yet, each once, in the same order and with the same augmentations; BatchNorm statistics "
                 "are now over %d image(s) per process (docs/scaling.md)", before, world, args.batch_size // world)
    return state


def test_after_training(model, args, cfg):
    """The reference prints the ForenSynths test table at the end when ``<dataroot>/test`` exists."""
    test_dir = os.path.join(args.dataroot, "test")
    if not os.path.isdir(test_dir):
        return None
    suite = suite_by_name("NPR-mini" if args.mini else "ForenSynths")
    eval_model = prepare_model(unwrap(model), cfg.device, cfg.channels_last, fold_bn=not args.no_fold_bn)
    rows, missing = evaluate_suite(eval_model, suite, test_dir, suite_transform(suite, args.loadSize, args.cropSize),
                                   cfg)
    if missing:
        log.info("Not found under %s (skipped): %s", test_dir, ", ".join(missing))
    if rows:
        log.info("%s test (%s):\n%s", suite.name, test_dir, suite_table(rows, suite.name))
    return rows


def start_run(args, argv, rank, world, device):
    """Checkpoint folder, logging, numerics, NPR-mini (built on first use), the seed; returns the
    (training, validation) samples."""
    exp_dir = os.path.join(args.checkpoints_dir, args.name)
    if rank == 0:
        ensure_writable_dir(exp_dir, "checkpoint folder")
        for which in ("latest", "last", "best", 0):
            if os.path.isdir(checkpoint_path(args, which)):  # found before an epoch is spent, not after
                raise UserError(f"{checkpoint_path(args, which)} is a folder, where the run writes a checkpoint; "
                                "remove it or choose another --name")
    setup_logging(os.path.join(exp_dir, "log.log") if rank == 0 else None, rank)
    log.info("%s", " ".join(["train.py"] + list(argv if argv is not None else sys.argv[1:])))
    set_numerics(tf32=args.tf32, exact=args.exact, deterministic=args.deterministic or args.exact)
    if args.mini:
        log.info("No --dataroot given: using the built-in NPR-mini benchmark (%s). Mini recipe: %s",
                 MINI_ROOT, ", ".join(f"{k}={getattr(args, k)}" for k in MINI_RECIPE))
        if rank == 0:
            build_mini(MINI_ROOT, rebuild=args.rebuild)
        if world > 1:
            dist.barrier()
    # After the build: building NPR-mini trains its generators with their own seed, and the
    # initial weights must not depend on whether this run built it (a fresh clone) or not.
    seed_everything(args.seed)
    train_samples = make_samples(os.path.join(args.dataroot, args.train_split), args.classes)
    val_samples = make_samples(os.path.join(args.dataroot, args.val_split), args.classes)
    if rank == 0:
        with atomic_file(os.path.join(exp_dir, "opt.txt")) as f:
            print_options(args, file=f)
    log.info("#training images = %d, #validation images = %d, device = %s, processes = %d",
             len(train_samples), len(val_samples), device, world)
    for split, samples in ((args.train_split, train_samples), (args.val_split, val_samples)):
        fakes = sum(label for _, label in samples)
        if fakes in (0, len(samples)):  # a half-copied dataset: the run would learn, or be judged on, one class
            log.warning("the %s split holds %d real and %d fake images: %s", split, len(samples) - fakes, fakes,
                        "the detector learns one class only" if split == args.train_split else
                        "its AP and the threshold chosen on it mean little")
    log.info("Operator %s, recipe %s: %s, lr %.3g, %s schedule, %d epochs, batch %d, label smoothing %g",
             args.operator, args.recipe, args.optim, args.lr, args.lr_schedule, args.niter, args.batch_size,
             args.label_smoothing)
    return train_samples, val_samples


def make_loader(args, samples, rule, rank, world, device):
    """The training loader (``--batch_size`` split over the processes) and its sampler."""
    cache_workers = default_workers(args.num_threads, torch.device("cpu"))  # building the cache is CPU work
    dataset = train_dataset(samples, make_train_transform(args), rule, args.cache_dir, cache_workers, rank, world)
    sampler = EpochSampler(dataset.labels, seed=args.seed, shuffle=not args.serial_batches,
                           class_balance=args.class_bal, rank=rank, world_size=world)
    loader = make_train_loader(dataset, args.batch_size // world, sampler, default_workers(args.num_threads, device),
                               device)
    loader.worker_init_fn = ignore_signals_in_worker
    return loader, sampler


def make_val_transform(args):
    """Validation (and the moving average's BatchNorm recompute): resize to loadSize (also with
    --no_resize, as the reference's val), centre crop; --val_crop_only: the centre crop alone (SAFE's)."""
    return EvalTransform(args.loadSize, args.cropSize, resize=not args.val_crop_only, crop=True,
                         interp=args.rz_interp[0])


def validate(model, args, state, samples, cfg, ctx):
    """Validation metrics of ``model`` and, with ``--ema`` (``ctx.ema``), of the average (its
    BatchNorm statistics recomputed first with ``--ema_bn_images``); the thresholds go into ``state``."""
    transform = make_val_transform(args)

    def evaluate(net):
        eval_model = prepare_model(net, cfg.device, cfg.channels_last, fold_bn=not args.no_fold_bn)
        return evaluate_samples(eval_model, samples["val"], transform, cfg, ctx.rank, ctx.world)

    val = evaluate(model)
    state.threshold = val["threshold"]
    if ctx.ema is not None:
        if args.ema_bn_images:  # a fixed, seeded subset of the training images
            subset = random.Random(args.seed).sample(samples["train"], min(args.ema_bn_images, len(samples["train"])))
            ctx.ema.recompute_bn(eval_loader(subset, transform, cfg), cfg.device)
        val_ema = evaluate(ctx.ema.module)
        state.ema_threshold = val_ema["threshold"]
        log.info("(Val EMA @ epoch %d) acc: %.4f; ap: %.4f", state.epoch, val_ema["acc"], val_ema["ap"])
    model.train()
    return val


def end_epoch(val, train_skipped, epoch_start, state, args, ctx):
    """Log the epoch, keep the checkpoints (latest, best, every --save_epoch_freq); True to stop early."""
    epoch = state.epoch
    log.info("(Val @ epoch %d) acc: %.4f; ap: %.4f; %d images; %.1fs", epoch, val["acc"], val["ap"],
             val["n_real"] + val["n_fake"], time.time() - epoch_start)
    if train_skipped or val["n_skipped"]:
        log.info("Images skipped in epoch %d (named in the warnings above): %d in training (this process), "
                 "%d in validation", epoch, train_skipped, val["n_skipped"])
    if ctx.writer is not None:
        ctx.writer.add_scalar("val/acc", val["acc"], state.total_steps)
        ctx.writer.add_scalar("val/ap", val["ap"], state.total_steps)
    improved = val["ap"] > state.best_ap + 1e-3
    state.best_ap = max(state.best_ap, val["ap"])
    state.epochs_no_improve = 0 if improved else state.epochs_no_improve + 1
    state.epoch, state.step_in_epoch = epoch + 1, 0
    ctx.save("latest")
    if improved:
        ctx.save("best")
    if epoch % args.save_epoch_freq == 0:
        ctx.save(str(epoch))
    if args.earlystop_epoch and state.epochs_no_improve >= args.earlystop_epoch:
        log.info("Early stopping: val AP did not improve for %d epochs", args.earlystop_epoch)
        return True
    return False


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_train_args(argv)
    keep_freed_memory()  # glibc keeps freed memory for the next batch (docs/speed.md)
    rank, world, device = init_distributed(args.gpu_ids, args.batch_size)
    with hold_run(args, rank):
        return run(args, argv, rank, world, device)


def resume_command(argv, world=1):
    """The command that resumes this run from its latest checkpoint: its own arguments, quoted
    for the shell, without an ``--epoch`` it resumed from before (that would go back to it)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--epoch":
            skip = True
        elif not (a.startswith("--epoch=") or a == "--continue_train"):
            kept.append(a)
    return ("train.py " if world > 1 else "python train.py ") + shlex.join(kept + ["--continue_train"])


def hold_run(args, rank):
    """Rank 0 holds the run folder's ``train.lock`` while it trains: a second train.py on the same
    --name (the command started again in another terminal) is one line, not two runs writing
    the same checkpoints in turn."""
    if rank != 0:
        return contextlib.nullcontext()
    exp_dir = os.path.join(args.checkpoints_dir, args.name)
    ensure_writable_dir(exp_dir, "checkpoint folder")
    return RunLock(os.path.join(exp_dir, "train.lock"), "another train.py is training this run", "--name")


def run(args, argv, rank, world, device):
    """The training of ``main``, from the run folder to the last checkpoint."""
    train_samples, val_samples = start_run(args, argv, rank, world, device)

    model = resnet50(operator=args.operator).to(device)
    if args.sync_bn:
        model, said = sync_batchnorm(model, world, device)
        log.info("%s", said)
    if args.train_channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args.optim, args.lr, args.beta1, args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    ema = EMA(model, args.ema) if args.ema else None
    images = training_list(train_samples)
    state = resume(args, model, optimizer, scaler, ema, images, len(train_samples)) if args.continue_train \
        else TrainState()
    state.train_images = images
    train_model = torch.compile(model) if args.compile else model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    rule = ImageRule(strict=args.strict_images, skip_truncated=args.skip_truncated)
    loader, sampler = make_loader(args, train_samples, rule, rank, world, device)
    schedule = LRSchedule(args.lr_schedule, args.lr, args.niter, max(len(loader), 1), args.delr_freq,
                          args.warmup_epochs, args.min_lr)  # len before any resume shortens the sampler
    step_cfg = StepConfig(channels_last=args.train_channels_last, amp=args.amp, loss_freq=args.loss_freq,
                          save_latest_freq=args.save_latest_freq, latest_path=checkpoint_path(args, "latest"),
                          schedule=schedule)
    eval_cfg = EvalConfig(device, args.batch_size, default_workers(args.num_threads, device), args.amp,
                          not args.no_channels_last, rule)

    def save(which):
        if rank == 0:
            save_checkpoint(checkpoint_state(model, optimizer, args, state, scaler, ema), checkpoint_path(args, which))

    writer = SummaryWriter(os.path.join(args.checkpoints_dir, args.name, "tensorboard")) if rank == 0 else None
    ctx = StepContext(device, optimizer, build_loss(args.label_smoothing), step_cfg, save, GracefulStop(), scaler, ema,
                      writer, rank, world)
    ctx.stopper.install()
    start = time.time()
    try:
        for epoch in range(state.epoch, args.niter):
            state.epoch = epoch
            sampler.set_epoch(epoch, start=samples_done(state, args.batch_size, world))
            epoch_start = time.time()
            train_skipped = train_one_epoch(train_model, loader, state, ctx)
            lr = schedule.lr_at(epoch + 1)  # the next epoch's: the reference decays the lr here
            if schedule.kind == "step" and lr != schedule.lr_at(epoch):
                log.info("Changing lr at the end of epoch %d to %.3g", epoch, lr)
            set_lr(optimizer, lr)
            val = validate(model, args, state, {"train": train_samples, "val": val_samples}, eval_cfg, ctx)
            if end_epoch(val, train_skipped, epoch_start, state, args, ctx):
                break
    except StopRequested as stop:
        log.info("Interrupted by %s after step %d; the latest checkpoint is %s. Resume with%s:\n  %s",
                 signal.Signals(stop.signum).name, state.total_steps, checkpoint_path(args, "latest"),
                 f" (launched as before, by torchrun with {world} processes)" if world > 1 else "",
                 resume_command(argv if argv is not None else sys.argv[1:], world))
        return 128 + stop.signum
    save("last")
    log.info("Training done in %.1f min; final weights: %s", (time.time() - start) / 60, checkpoint_path(args, "last"))
    if rank == 0:
        test_after_training(model, args, eval_cfg)
    if ctx.writer is not None:
        ctx.writer.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
