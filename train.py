"""Train the NPR detector: the reference's ``train.py`` recipe (chuangchuangtan/NPR-DeepfakeDetection).

    python train.py                      # the built-in mini benchmark (built on first use)
    python train.py --dataroot ./datasets/ForenSynths_train_val --classes car,cat,chair,horse \
        --name 4class-resnet-car-cat-chair-horse --batch_size 32 --lr 0.0002 --delr_freq 10 --niter 50

Top to bottom: ``main`` parses and holds the run's folder; ``train`` builds the data, model and
optimiser, resumes if asked (``networks.checkpoint``), then trains (``engine.train_one_epoch``) and
validates each epoch. Under ``torchrun``, ``--batch_size`` is the global batch.
"""
import os
import random
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

from data.benchmarks import suite_by_name
from data.discovery import make_samples
from data.images import ImageRule
from data.loaders import default_workers, train_loader
from data.mini import build_mini
from data.transforms import train_transform, val_transform
from devices import keep_freed_memory, seed_everything, set_numerics
from distributed import init_distributed, samples_done, sync_batchnorm, unwrap, world_size
from engine import (GracefulStop, StepConfig, StepContext, StopRequested, eval_config, eval_loader, evaluate_samples,
                    evaluate_suite, suite_transform, train_one_epoch)
from files import RunLock, atomic_file, check_output, fingerprint
from networks import prepare_model, resnet50, save_checkpoint
from networks.checkpoint import (TrainState, check_resume_position, checkpoint_path, kept_at_epoch_end,
                                 require_checkpoint, resume_command, resume_training, run_checkpoints,
                                 training_checkpoint)
from networks.ema import EMA
from options import MINI_RECIPE, MINI_ROOT, parse_train_args, print_options
from recipe import LRSchedule, build_loss, build_optimizer
from report import suite_table
from util import log, run_cli, setup_logging


def main(argv=None):
    args = parse_train_args(argv)
    keep_freed_memory()  # glibc keeps freed memory for the next batch (docs/speed.md)
    rank, world, device = init_distributed(args.gpu_ids, args.batch_size)
    run_dir = os.path.join(args.checkpoints_dir, args.name)
    if rank != 0:
        return train(args, argv, run_dir, rank, world, device)
    # Before an epoch is spent: the folder and every checkpoint name can be written. Rank 0 holds
    # train.lock while it trains: the same command in another terminal is one line, not two runs.
    for which in ("latest", "last", "best", 0):
        check_output(checkpoint_path(run_dir, which), "--name")
    with RunLock(os.path.join(run_dir, "train.lock"), "another train.py is training this run", "--name"):
        return train(args, argv, run_dir, rank, world, device)


def train(args, argv, run_dir, rank, world, device):
    """The training of ``main``, from the run folder to the last checkpoint."""
    samples = start_run(args, argv, run_dir, rank, world, device)
    model = resnet50(operator=args.operator).to(device)
    if args.sync_bn:
        model, said = sync_batchnorm(model, world, device)
        log.info("%s", said)
    if args.train_channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args.optim, args.lr, args.beta1, args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    ema = EMA(model, args.ema) if args.ema else None
    images = f"{len(samples['train'])}:{fingerprint([path for path, _ in samples['train']])}"
    state = resume(args, run_dir, (model, optimizer, scaler, ema), images, len(samples["train"])) \
        if args.continue_train else TrainState()
    state.train_images = images
    train_model = torch.compile(model) if args.compile else model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    rule = ImageRule(strict=args.strict_images, skip_truncated=args.skip_truncated)
    loader, sampler = train_loader(
        samples["train"], train_transform(args), args.batch_size // world,
        {"seed": args.seed, "shuffle": not args.serial_batches, "class_balance": args.class_bal}, rule=rule,
        cache_dir=args.cache_dir, workers=default_workers(args.num_threads, device),
        cache_workers=default_workers(args.num_threads, torch.device("cpu")), device=device, rank=rank, world=world)
    schedule = LRSchedule(args.lr_schedule, args.lr, args.niter, max(len(loader), 1), args.delr_freq,
                          args.warmup_epochs, args.min_lr)  # len before any resume shortens the sampler
    eval_cfg = eval_config(args, device, images=rule)

    def save(which):
        if rank == 0:
            ckpt = training_checkpoint(unwrap(model), optimizer, args, state, world, scaler, ema,
                                       lr=schedule.lr_at(state.epoch, state.step_in_epoch))
            save_checkpoint(ckpt, checkpoint_path(run_dir, which))

    writer = SummaryWriter(os.path.join(run_dir, "tensorboard")) if rank == 0 else None
    ctx = StepContext(device=device, optimizer=optimizer, loss_fn=build_loss(args.label_smoothing), save=save,
                      config=StepConfig(channels_last=args.train_channels_last, amp=args.amp, schedule=schedule,
                                        loss_freq=args.loss_freq, save_latest_freq=args.save_latest_freq,
                                        latest_path=checkpoint_path(run_dir, "latest")),
                      stopper=GracefulStop(), scaler=scaler, ema=ema, writer=writer, rank=rank, world=world)
    ctx.stopper.install()
    start = time.time()
    try:
        for epoch in range(state.epoch, args.niter):
            state.epoch = epoch
            sampler.set_epoch(epoch, start=samples_done(state, args.batch_size, world))
            epoch_start = time.time()
            train_skipped = train_one_epoch(train_model, loader, state, ctx)
            if schedule.kind == "step" and schedule.lr_at(epoch + 1) != schedule.lr_at(epoch):
                log.info("Changing lr at the end of epoch %d to %.3g", epoch, schedule.lr_at(epoch + 1))
            val = validate(model, args, state, samples, eval_cfg, ctx)
            if end_epoch(val, train_skipped, epoch_start, state, args, ctx):
                break
    except StopRequested as stop:
        log.info("Interrupted by %s after step %d; the latest checkpoint is %s. Resume with%s:\n  %s",
                 signal.Signals(stop.signum).name, state.total_steps, checkpoint_path(run_dir, "latest"),
                 f" (launched as before, by torchrun with {world} processes)" if world > 1 else "",
                 resume_command(argv if argv is not None else sys.argv[1:], world))
        return 128 + stop.signum
    save("last")
    log.info("Training done in %.1f min; final weights: %s", (time.time() - start) / 60, checkpoint_path(run_dir, "last"))
    if rank == 0:
        test_after_training(model, args, eval_cfg)
        writer.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def start_run(args, argv, run_dir, rank, world, device):
    """Logging, numerics, NPR-mini (built on first use), the seed; returns the samples
    ({"train": ..., "val": ...})."""
    setup_logging(os.path.join(run_dir, "log.log") if rank == 0 else None, rank)
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
    samples = {split: make_samples(os.path.join(args.dataroot, getattr(args, f"{split}_split")), args.classes)
               for split in ("train", "val")}
    if rank == 0:
        with atomic_file(os.path.join(run_dir, "opt.txt")) as f:
            print_options(args, file=f)
    log.info("#training images = %d, #validation images = %d, device = %s, processes = %d",
             len(samples["train"]), len(samples["val"]), device, world)
    for split, subset in samples.items():
        fakes = sum(label for _, label in subset)
        if fakes in (0, len(subset)):  # a half-copied dataset: the run would learn, or be judged on, one class
            log.warning("the %s split holds %d real and %d fake images: %s", getattr(args, f"{split}_split"),
                        len(subset) - fakes, fakes, "the detector learns one class only" if split == "train" else
                        "its AP and the threshold chosen on it mean little")
    log.info("Operator %s, recipe %s: %s, lr %.3g, %s schedule, %d epochs, batch %d, label smoothing %g",
             args.operator, args.recipe, args.optim, args.lr, args.lr_schedule, args.niter, args.batch_size,
             args.label_smoothing)
    return samples


def resume(args, run_dir, objects, images, n_images):
    """The ``TrainState`` of ``--epoch``'s checkpoint, loaded into ``objects`` (model, optimizer,
    scaler, ema); ``images``: this run's ``TrainState.train_images`` of ``n_images``."""
    path = require_checkpoint(checkpoint_path(run_dir, args.epoch), "--continue_train",
                              "check --name / --checkpoints_dir / --epoch, or drop --continue_train")
    others = [w for w in run_checkpoints(run_dir) if w != str(args.epoch)]

    def position(state, ckpt, refuse):
        check_resume_position(state, (ckpt.get("opt") or {}).get("batch_size", args.batch_size), niter=args.niter,
                              batch_size=args.batch_size, images=images, n_images=n_images, refuse=refuse,
                              ends=[w for w in others if w.isdigit()])
    state, ckpt = resume_training(path, *objects, new_optim=args.new_optim, others=others, position=position)
    log.info("Resuming from %s: epoch %d, step %d of the epoch, %d steps in all, lr %.3g",
             path, state.epoch, state.step_in_epoch, state.total_steps, objects[1].param_groups[0]["lr"])
    before = ckpt.get("world_size", 1)
    if world_size() != before:
        log.info("The checkpoint was written by %d process(es), this run has %d: the epoch goes on with the images "
                 "not seen yet, each once, as before; BatchNorm now sees %d image(s) per process (docs/scaling.md)",
                 before, world_size(), args.batch_size // world_size())
    return state


def validate(model, args, state, samples, cfg, ctx):
    """Validation metrics of ``model`` and, with ``--ema`` (``ctx.ema``), of the average (its
    BatchNorm statistics recomputed first with ``--ema_bn_images``); the thresholds go into ``state``."""
    transform = val_transform(args)

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
    """Log the epoch, keep the checkpoints (``kept_at_epoch_end``); True to stop early."""
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
    for which in kept_at_epoch_end(epoch, improved, args.save_epoch_freq):
        ctx.save(which)
    if args.earlystop_epoch and state.epochs_no_improve >= args.earlystop_epoch:
        log.info("Early stopping: val AP did not improve for %d epochs", args.earlystop_epoch)
        return True
    return False


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


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
