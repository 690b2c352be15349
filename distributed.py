"""Running as one of several processes: the launcher's environment (``torchrun``, or a
scheduler's script), the process group, SyncBatchNorm, the model inside its wrappers, and the
one all-reduce per training step. A single process needs none of it and gets (0, 1)."""
import datetime
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from devices import select_device
from util import UserError


def launch_env(rendezvous=False):
    """``(rank, world_size, local_rank)`` from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` (torchrun's, or a scheduler's); ``(0, 1, 0)`` where none is set. With
    ``rendezvous`` (train.py), a launch also needs ``MASTER_ADDR`` and ``MASTER_PORT``. Every value
    that cannot describe one process of a run is named in one ``UserError``."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    given = {k: os.environ[k] for k in names if k in os.environ}
    problems = []

    def whole(name, default, low, high=None):
        if name not in given:
            return default
        try:
            n = int(given[name])
        except ValueError:
            problems.append(f"{name} is not a whole number")
            return None
        if n < low or (high is not None and n > high):
            problems.append(f"{name} is not in {low}..{high if high is not None else ''}")
            return None
        return n
    rank, world, local = whole("RANK", 0, 0), whole("WORLD_SIZE", 1, 1), whole("LOCAL_RANK", 0, 0)
    local_world = whole("LOCAL_WORLD_SIZE", None, 1)
    if rank is not None and world is not None and rank >= world:
        problems.append("RANK must be below WORLD_SIZE")
    if local is not None and local_world is not None and local >= local_world:
        problems.append("LOCAL_RANK must be below LOCAL_WORLD_SIZE")
    if rendezvous and ({"RANK", "WORLD_SIZE"} & set(given)):
        problems += [f"{k} is not set" for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                     if not given.get(k, "").strip()]
        if given.get("MASTER_PORT", "").strip():
            whole("MASTER_PORT", None, 1, 65535)
    if problems:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise UserError(f"the environment's {shown} cannot describe one process of a run ({'; '.join(problems)}): "
                        "use the values torchrun sets, or unset them to run a single process")
    return rank, world, local


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
    """How many of its samples this process skips in the epoch being resumed: each step done took
    the global ``batch_size``, so that many positions of the epoch's order per step are done,
    whatever the number of processes (``EpochSampler`` deals positions round-robin)."""
    return state.step_in_epoch * (batch_size // world)


def world_size():
    """The number of processes of the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def unwrap(model):
    """The plain model inside a DistributedDataParallel and/or torch.compile wrapper."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def sync_step(loss, stopper, world):
    """(mean loss over processes, whether to stop): one all-reduce under DDP, so every rank
    sees the same NaN and the same stop request at the same step and none waits forever."""
    if world == 1:
        return loss.item(), stopper.signum is not None
    flags = torch.stack([loss.detach().float(), torch.tensor(float(stopper.signum is not None), device=loss.device)])
    dist.all_reduce(flags)
    return flags[0].item() / world, flags[1].item() > 0
