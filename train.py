"""Train the NPR detector: the reference's ``train.py`` recipe (chuangchuangtan/NPR-DeepfakeDetection).

    python train.py                      # the built-in mini benchmark (built on first use)
    python train.py --dataroot ./datasets/ForenSynths_train_val --classes car,cat,chair,horse \
        --name 4class-resnet-car-cat-chair-horse --batch_size 32 --lr 0.0002 --delr_freq 10 --niter 50

Read top to bottom: ``main`` sets up data, model and optimiser, resumes if asked, then runs
``train_one_epoch`` and ``evaluate`` per epoch. Everything needed to resume lives in one
checkpoint dict (see ``checkpoint_state``). ``torchrun --nproc_per_node=N train.py ...`` trains
with DistributedDataParallel; ``--batch_size`` is then the global batch, split over processes.
"""
import argparse
import datetime
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from data.benchmarks import suite_by_name
from data.datasets import BinaryImageDataset, make_eval_loader, make_train_loader, opt_workers
from data.discovery import make_samples
from data.transforms import EvalTransform, TrainTransform, normalize_batch
from networks import extract_state_dict, load_checkpoint, resnet50, save_checkpoint
from networks.checkpoint import load_state_dict_strict
from options import MINI_ROOT, check_train, explicit_options, print_options, train_parser
from util import (AMP_DTYPE, UserError, ensure_writable_dir, log, run_cli, seed_everything, select_device,
                  set_numerics, setup_logging)
from validate import compute_metrics, evaluate_suite, predict_loader, prepare_model, suite_table

LR_DECAY = 0.9  # the reference's networks/trainer.py: lr *= 0.9 after every delr_freq epochs


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


def ignore_signals_in_worker(_):
    # Ctrl-C reaches the whole process group; workers leave the shutdown to the main process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ----------------------------------------------------------------------------- setup

def parse_options(argv):
    parser = train_parser()
    opt = parser.parse_args(argv)
    typed = explicit_options(parser, argv)
    opt.auto_workers = "num_threads" not in typed
    opt.mini = opt.dataroot is None
    if opt.mini:
        from data.mini import MINI_RECIPE
        opt.dataroot = MINI_ROOT
        for k, v in MINI_RECIPE.items():
            if k not in typed:
                setattr(opt, k, v)
        if "name" not in typed:
            opt.name = "npr-mini"
    return check_train(opt)


def init_distributed(opt):
    """(rank, world_size, device). Under torchrun: NCCL on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, select_device(opt.gpu_ids)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and str(opt.gpu_ids).strip() != "-1"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    # Long timeout: rank 0 alone builds --cache_dir and runs the final test while the others wait.
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=3))
    if opt.batch_size % world:
        raise UserError(f"--batch_size {opt.batch_size} is the global batch and must divide by the "
                        f"{world} processes")
    return rank, world, device


def train_dataset(samples, transform, opt, rank=0, world=1):
    """The training images, decoded per step, or read from the --cache_dir store (built by rank 0)."""
    if not opt.cache_dir:
        return BinaryImageDataset(samples, transform, strict=opt.strict_images, skip_truncated=opt.skip_truncated)
    from data.cache import cached_train_dataset
    if rank == 0:
        dataset = cached_train_dataset(opt.cache_dir, samples, transform, opt.strict_images,
                                       opt_workers(opt, torch.device("cpu")))  # the build is CPU-only work
    if world > 1:
        dist.barrier()
    if rank != 0:
        dataset = cached_train_dataset(opt.cache_dir, samples, transform, opt.strict_images, build=False)
    return dataset


def checkpoint_path(opt, which):
    return os.path.join(opt.checkpoints_dir, opt.name, f"model_epoch_{which}.pth")


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


def unwrap(model):
    """The plain model inside a DistributedDataParallel and/or torch.compile wrapper."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def checkpoint_state(model, optimizer, opt, progress, scaler=None, ema=None):
    """The one dict that resuming, evaluation and notebooks read. ``threshold`` is the decision
    threshold with the best balanced accuracy on the last validation (``threshold_ema`` for the
    moving-average weights ``model_ema``); the scripts show ACC at it beside ACC at 0.5."""
    raw = unwrap(model)
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opt).items()
               if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    return {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": progress["epoch"], "step_in_epoch": progress["step_in_epoch"],
            "total_steps": progress["total_steps"], "lr": optimizer.param_groups[0]["lr"],
            "best_ap": progress["best_ap"], "epochs_no_improve": progress["epochs_no_improve"],
            "opt": options, "rng": rng_state(), "arch": "npr_resnet50",
            "scaler": scaler.state_dict() if scaler is not None else None,
            "threshold": progress.get("threshold"), "threshold_ema": progress.get("threshold_ema"),
            "model_ema": ema.module.state_dict() if ema is not None else None,
            "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0}


def build_loss():
    """The reference's loss: binary cross-entropy on the logit (label 1 = fake)."""
    return nn.BCEWithLogitsLoss()


def build_optimizer(model, opt):
    """Adam (betas (beta1, 0.999), no weight decay) or SGD without momentum, as the reference."""
    if opt.optim == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
    return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=0.0, weight_decay=0)


# ----------------------------------------------------------------------------- loops

def sync_step(loss, stopper, world):
    """(mean loss over processes, whether to stop): one all-reduce under DDP, so every rank
    sees the same NaN and the same stop request at the same step and none waits forever."""
    if world == 1:
        return loss.item(), stopper.signum is not None
    flags = torch.stack([loss.detach().float(), torch.tensor(float(stopper.signum is not None), device=loss.device)])
    dist.all_reduce(flags)
    return flags[0].item() / world, flags[1].item() > 0


def build_ema(model, decay):
    """torch's ``AveragedModel`` with an exponential moving average of the parameters and of the
    BatchNorm buffers (``use_buffers``), updated after every optimiser step."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def val_loader(samples, opt, device, resize=True):
    """The validation loader: resize to loadSize (the reference's val, also with --no_resize
    unless ``resize=False``), centre crop cropSize, uint8 batches."""
    transform = EvalTransform(opt.loadSize, opt.cropSize, resize=resize, crop=True, interp=opt.rz_interp[0])
    return make_eval_loader(samples, transform, opt.batch_size, num_workers=opt_workers(opt, device),
                            device=device, strict=opt.strict_images, skip_truncated=opt.skip_truncated)


def recalibrate_bn(ema, samples, device, opt):
    """Recompute the BatchNorm statistics of the averaged weights (torch's ``update_bn``) on a
    fixed, seeded subset of ``opt.ema_bn_images`` training images (resize and centre crop as
    in validation): the average of the raw model's statistics does not describe the averaged
    weights while those still move fast (short runs, high learning rate)."""
    from torch.optim.swa_utils import update_bn
    subset = random.Random(opt.seed).sample(samples, min(opt.ema_bn_images, len(samples)))
    loader = val_loader(subset, opt, device, resize=not opt.no_resize)
    update_bn((normalize_batch(b.images.to(device)) for b in loader if len(b.images)), ema.module)


def train_one_epoch(model, loader, optimizer, loss_fn, device, opt, progress, save_latest, stopper,
                    writer=None, rank=0, world=1, scaler=None, ema=None):
    model.train()
    epoch = progress["epoch"]
    channels_last = opt.train_channels_last
    use_amp = opt.amp and device.type == "cuda"
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if rank == 0 else True)
    skipped = 0
    for batch in bar:
        skipped += len(batch.skipped)
        if len(batch.labels) == 0:
            if world > 1:  # every rank must take every step together
                raise UserError("every image of one batch was unreadable; under torchrun remove the files named "
                                "in the warnings above (or find them with --strict_images) and resume")
            continue
        x = batch.images.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=use_amp):
            logits = model(normalize_batch(x)).squeeze(1)
        loss = loss_fn(logits.float(), y)
        loss_value, stop = sync_step(loss, stopper, world)
        if not math.isfinite(loss_value):
            raise UserError(f"the loss became {loss_value} at epoch {epoch}, step {progress['total_steps']}; "
                            f"training stopped and the last good checkpoint ({checkpoint_path(opt, 'latest')}) "
                            "was kept; try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # --amp: float16 gradients are scaled to stay representable
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        progress["total_steps"] += 1
        progress["step_in_epoch"] += 1
        step = progress["total_steps"]
        if step % opt.loss_freq == 0:
            log.info("Train loss: %.4f at step: %d lr %.3g", loss_value, step, optimizer.param_groups[0]["lr"])
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        if step % opt.save_latest_freq == 0:
            save_latest()
        if stop:
            save_latest()
            raise StopRequested(stopper.signum or signal.SIGTERM)
        bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    return skipped


def evaluate(model, samples, device, opt, rank=0, world=1):
    """Val metrics (resize loadSize + centre crop cropSize); under DDP each rank scores a shard."""
    raw = unwrap(model)
    loader = val_loader(samples[rank::world], opt, device)
    eval_model = prepare_model(raw, device, channels_last=not opt.no_channels_last, fold_bn=not opt.no_fold_bn)
    y_true, y_prob, skipped, _ = predict_loader(eval_model, loader, device, amp=opt.amp,
                                                channels_last=not opt.no_channels_last)
    n_skipped = len(skipped)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (y_true, y_prob, n_skipped))
        y_true = np.concatenate([p[0] for p in parts])
        y_prob = np.concatenate([p[1] for p in parts])
        n_skipped = sum(p[2] for p in parts)
    m = compute_metrics(y_true, y_prob)
    return dict(m, n_skipped=n_skipped, threshold=m["balanced_threshold"])


def test_after_training(model, opt, device):
    """The reference prints the ForenSynths test table at the end when ``<dataroot>/test`` exists."""
    test_dir = os.path.join(opt.dataroot, "test")
    if not os.path.isdir(test_dir):
        return None
    suite = suite_by_name("NPR-mini" if opt.mini else "ForenSynths")
    raw = unwrap(model)
    test_opt = argparse.Namespace(**dict(vars(opt), no_resize=False, no_crop=False))
    eval_model = prepare_model(raw, device, channels_last=not opt.no_channels_last, fold_bn=not opt.no_fold_bn)
    rows, missing = evaluate_suite(eval_model, suite, test_dir, device, test_opt)
    if missing:
        log.info("Not found under %s (skipped): %s", test_dir, ", ".join(missing))
    if rows:
        log.info("%s test (%s):\n%s", suite.name, test_dir, suite_table(rows, suite.name))
    return rows


# ----------------------------------------------------------------------------- main

def main(argv=None):
    opt = parse_options(argv)
    rank, world, device = init_distributed(opt)
    exp_dir = os.path.join(opt.checkpoints_dir, opt.name)
    if rank == 0:
        ensure_writable_dir(exp_dir, "checkpoint folder")
    setup_logging(os.path.join(exp_dir, "log.log") if rank == 0 else None, rank)
    log.info("%s", " ".join(["train.py"] + list(argv if argv is not None else sys.argv[1:])))
    set_numerics(tf32=opt.tf32, exact=opt.exact, deterministic=opt.deterministic)

    if opt.mini:
        from data.mini import build_mini, MINI_RECIPE
        log.info("No --dataroot given: using the built-in NPR-mini benchmark (%s). Mini recipe: %s",
                 MINI_ROOT, ", ".join(f"{k}={getattr(opt, k)}" for k in MINI_RECIPE))
        if rank == 0:
            build_mini(MINI_ROOT, rebuild=opt.rebuild)
        if world > 1:
            dist.barrier()
    # After the build: building NPR-mini trains its generators with their own seed, and the
    # initial weights must not depend on whether this run built it (a fresh clone) or not.
    seed_everything(opt.seed)
    train_root = os.path.join(opt.dataroot, opt.train_split)
    val_root = os.path.join(opt.dataroot, opt.val_split)
    train_samples = make_samples(train_root, opt.classes)
    val_samples = make_samples(val_root, opt.classes)
    if rank == 0:
        with open(os.path.join(exp_dir, "opt.txt"), "w") as f:
            print_options(opt, file=f)
    log.info("#training images = %d, #validation images = %d, device = %s, processes = %d",
             len(train_samples), len(val_samples), device, world)

    model = resnet50(num_classes=1).to(device)
    if opt.train_channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, opt)
    scaler = torch.amp.GradScaler("cuda") if opt.amp and device.type == "cuda" else None
    progress = {"epoch": 0, "step_in_epoch": 0, "total_steps": 0, "best_ap": -1.0, "epochs_no_improve": 0,
                "threshold": None, "threshold_ema": None}
    ema = build_ema(model, opt.ema) if opt.ema else None

    if opt.continue_train:
        path = checkpoint_path(opt, opt.epoch)
        if not os.path.isfile(path):
            raise UserError(f"--continue_train: no checkpoint '{path}' to resume from; "
                            "check --name / --checkpoints_dir / --epoch, or drop --continue_train")
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt or "epoch" not in ckpt:
            raise UserError(f"'{path}' holds weights only, not a training state; it can be evaluated, not resumed")
        load_state_dict_strict(model, extract_state_dict(ckpt), source=f"checkpoint '{path}'")
        if not opt.new_optim:
            optimizer.load_state_dict(ckpt["optimizer"])
        for k in progress:
            progress[k] = ckpt.get(k, progress[k])
        set_rng_state(ckpt["rng"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("model_ema"):
            ema.module.load_state_dict(ckpt["model_ema"])
            ema.n_averaged.fill_(ckpt["ema_n_averaged"])
        log.info("Resuming from %s: epoch %d, step %d of the epoch, %d steps in all, lr %.3g",
                 path, progress["epoch"], progress["step_in_epoch"], progress["total_steps"],
                 optimizer.param_groups[0]["lr"])

    train_model = model
    if opt.compile:
        train_model = torch.compile(model)
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    per_rank = argparse.Namespace(**dict(vars(opt), batch_size=opt.batch_size // world))
    dataset = train_dataset(train_samples, TrainTransform(opt), opt, rank, world)
    loader, sampler = make_train_loader(dataset, per_rank, device, rank, world)
    loader.worker_init_fn = ignore_signals_in_worker
    loss_fn = build_loss()
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(exp_dir, "tensorboard"))

    def save(which):
        if rank == 0:
            save_checkpoint(checkpoint_state(model, optimizer, opt, progress, scaler, ema), checkpoint_path(opt, which))

    stopper = GracefulStop()
    stopper.install()
    start = time.time()
    try:
        for epoch in range(progress["epoch"], opt.niter):
            progress["epoch"] = epoch
            sampler.set_epoch(epoch, start=progress["step_in_epoch"] * per_rank.batch_size)
            epoch_start = time.time()
            train_skipped = train_one_epoch(train_model, loader, optimizer, loss_fn, device, per_rank, progress,
                                            lambda: save("latest"), stopper, writer, rank, world, scaler, ema)
            if epoch % opt.delr_freq == 0 and epoch != 0:
                for g in optimizer.param_groups:
                    g["lr"] *= LR_DECAY
                log.info("Changing lr at the end of epoch %d to %.3g", epoch, optimizer.param_groups[0]["lr"])
            val = evaluate(model, val_samples, device, opt, rank, world)
            progress["threshold"] = val["threshold"]
            if ema is not None:
                if opt.ema_bn_images:
                    recalibrate_bn(ema, train_samples, device, opt)
                val_ema = evaluate(ema.module, val_samples, device, opt, rank, world)
                progress["threshold_ema"] = val_ema["threshold"]
                log.info("(Val EMA @ epoch %d) acc: %.4f; ap: %.4f", epoch, val_ema["acc"], val_ema["ap"])
            model.train()
            log.info("(Val @ epoch %d) acc: %.4f; ap: %.4f; %d images; %.1fs", epoch, val["acc"], val["ap"],
                     val["n_real"] + val["n_fake"], time.time() - epoch_start)
            if train_skipped or val["n_skipped"]:
                log.info("Images skipped in epoch %d (named in the warnings above): %d in training (this process), "
                         "%d in validation", epoch, train_skipped, val["n_skipped"])
            if writer is not None:
                writer.add_scalar("val/acc", val["acc"], progress["total_steps"])
                writer.add_scalar("val/ap", val["ap"], progress["total_steps"])
            improved = val["ap"] > progress["best_ap"] + 1e-3
            progress["best_ap"] = max(progress["best_ap"], val["ap"])
            progress["epochs_no_improve"] = 0 if improved else progress["epochs_no_improve"] + 1
            progress["epoch"], progress["step_in_epoch"] = epoch + 1, 0
            save("latest")
            if improved:
                save("best")
            if epoch % opt.save_epoch_freq == 0:
                save(str(epoch))
            if opt.earlystop_epoch and progress["epochs_no_improve"] >= opt.earlystop_epoch:
                log.info("Early stopping: val AP did not improve for %d epochs", opt.earlystop_epoch)
                break
    except StopRequested as stop:
        log.info("Interrupted by %s after step %d; the latest checkpoint is %s. Resume with:\n  python train.py %s "
                 "--continue_train", signal.Signals(stop.signum).name, progress["total_steps"],
                 checkpoint_path(opt, "latest"), " ".join(a for a in (argv or []) if a != "--continue_train"))
        return 128 + stop.signum
    save("last")
    log.info("Training done in %.1f min; final weights: %s", (time.time() - start) / 60, checkpoint_path(opt, "last"))
    if rank == 0:
        test_after_training(model, opt, device)
    if writer is not None:
        writer.close()
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
