"""Where and how the model computes: the device (CUDA when there is one, the CPU otherwise),
float32 numerics, seeds, the AMP dtype, and the allocator setting every script makes first."""
import ctypes
import os
import random
import sys

import numpy as np
import torch

from util import UserError, one_line

# --amp: float16 autocast on CUDA (with a GradScaler when training). float16, not bfloat16:
# it moves the probabilities less (docs/speed.md).
AMP_DTYPE = torch.float16


def keep_freed_memory():
    """Let glibc keep large freed blocks instead of unmapping them: by default every allocation
    over 32 MiB is a fresh ``mmap``, so each batch's activations are faulted in again page by
    page (a third of CPU evaluation's time, docs/speed.md). Raises glibc's mmap and trim
    thresholds (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do), for a
    higher peak. Every script that runs the model calls it first; ``NPR_ALLOCATOR=system`` leaves
    glibc as it is. True when it took effect (Linux with glibc)."""
    if os.environ.get("NPR_ALLOCATOR", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, say)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def select_device(gpu_ids="0"):
    """CUDA (the first id of ``--gpu_ids``) when available, else the CPU; ``-1`` forces the CPU."""
    try:
        ids = [int(i) for i in str(gpu_ids).split(",") if i.strip() != ""] if gpu_ids is not None else []
    except ValueError:
        raise UserError(f"gpu_ids {gpu_ids!r}: CUDA device ids, e.g. 0 or 0,1; -1 for the CPU") from None
    if not ids or ids[0] < 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    if ids[0] >= torch.cuda.device_count():
        raise UserError(f"--gpu_ids {gpu_ids}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                        "use --gpu_ids -1 for the CPU")
    return torch.device("cuda", ids[0])


def usable_device(device):
    """``torch.device(device)`` once a tensor can be made there; a device this machine lacks ('cuda'
    without a GPU) is one ``UserError``, not an error from inside the first model move."""
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:
        why = one_line(e).split(". ")[0]
        raise UserError(f"device {str(device)!r} cannot be used here ({why}); use 'cpu', or None for CUDA when "
                        "available") from None
    return device


def set_numerics(tf32=False, exact=False, deterministic=False):
    """Float32 numerics on CUDA: TF32 off unless asked (PyTorch's cuDNN default rounds inputs to
    10 mantissa bits; the reference ran without cuDNN); ``exact`` does what the reference's
    ``seed_torch`` does (cuDNN off, deterministic algorithms); ``deterministic`` only the latter."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        precision = "tf32" if tf32 else "ieee"  # PyTorch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if exact:
        torch.backends.cudnn.enabled = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    if exact or deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
