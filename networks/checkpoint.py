"""Checkpoints, both sides, in one place.

Writing (train.py): one dict (weights, optimiser, ``TrainState``, options, RNG states, moving
average) written atomically with fsync; which files a run keeps (``model_epoch_{latest,best,last,
<epoch>}.pth``); resuming, every entry checked first, so that a damaged or foreign file is one line
naming the run's other checkpoints.

Reading: the formats seen in the wild (a plain state dict as ``NPR.pth``, ``model`` or
``state_dict`` keys, ``module.`` / ``_orig_mod.`` prefixes, SAFE's checkpoints with their
``argparse.Namespace``), always ``weights_only=True`` and after checking that the sizes the file
declares fit this network. A checkpoint is known by the SHA-256 of the bytes loaded, not its path.
"""
import argparse
import hashlib
import io
import math
import os
import pickle
import random
import shlex
import warnings
import zipfile
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch

from files import atomic_file, file_kind
from util import UserError, log, one_line

from .ema import THRESHOLD_KEY as EMA_THRESHOLD_KEY
from .ema import WEIGHTS_KEY as EMA_WEIGHTS_KEY
from .ema import empty_state as empty_ema_state
from .operators import operator_for_head

WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
KEY_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError):
    pass


# ----------------------------------------------------------------------------- writing

@dataclass(kw_only=True)
class TrainState:
    """Where training is: the counters, the best validation AP so far and the decision
    thresholds of the last validation. The checkpoint stores it beside the weights
    (``as_checkpoint``) and resuming restores it (``from_checkpoint``), under the keys the
    checkpoints have always had."""
    epoch: int = 0
    step_in_epoch: int = 0
    total_steps: int = 0
    best_ap: float = -1.0
    epochs_no_improve: int = 0
    threshold: float = None       # best balanced accuracy on the last validation
    ema_threshold: float = None   # the same for the moving average (``networks.ema.THRESHOLD_KEY``)
    train_images: str = None      # "<count>:<fingerprint>" of the training list, which a resume compares

    # A field's key in the checkpoint, where it differs from the field's name.
    KEYS = {"ema_threshold": EMA_THRESHOLD_KEY}

    def as_checkpoint(self):
        return {self.KEYS.get(k, k): v for k, v in asdict(self).items()}

    @classmethod
    def from_checkpoint(cls, ckpt):
        fresh = asdict(cls())
        return cls(**{k: ckpt.get(cls.KEYS.get(k, k), v) for k, v in fresh.items()})


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


def training_checkpoint(model, optimizer, options, state, world=1, scaler=None, ema=None, *, lr):
    """The one dict that resuming, evaluation and notebooks read: the plain ``model``'s weights,
    the optimiser, the ``TrainState``, the ``options``' plain values, the number of processes, the
    random state, the moving average (``networks.ema``) and ``lr``, the next step's."""
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(options).items()
             if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state.as_checkpoint(),
            "world_size": world, "lr": lr, "opt": plain, "rng": rng_state(),
            "arch": "npr_resnet50", "operator": model.operator,
            "scaler": scaler.state_dict() if scaler is not None else None,
            **(ema.state() if ema is not None else empty_ema_state())}


def save_checkpoint(obj, path):
    """``torch.save`` through ``files.atomic_file`` with fsync. If anything fails (disk full,
    interrupted), the previous file at ``path`` is untouched and the error says so."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_file(path, "wb", fsync=True) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        kept = "the previous checkpoint is intact" if os.path.exists(path) else "no checkpoint was written"
        why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        raise CheckpointError(f"could not write checkpoint '{path}' ({why}); {kept}") from e
    return path


def checkpoint_path(folder, which):
    """A run's checkpoint ``which`` ('latest', 'best', 'last' or an epoch) in its ``folder``."""
    return os.path.join(folder, f"model_epoch_{which}.pth")


def run_checkpoints(folder):
    """The ``--epoch`` values of the checkpoints in a run's ``folder``, newest first."""
    found = [(os.path.getmtime(os.path.join(folder, f)), f[len("model_epoch_"):-len(".pth")])
             for f in os.listdir(folder) if f.startswith("model_epoch_") and f.endswith(".pth")
             and os.path.isfile(os.path.join(folder, f))] if os.path.isdir(folder) else []
    return [w for _, w in sorted(found, reverse=True)]


def kept_at_epoch_end(epoch, improved, save_epoch_freq):
    """Which checkpoints a run writes at the end of ``epoch``: the latest always, the best when
    validation AP ``improved``, and the epoch's own every ``save_epoch_freq`` epochs."""
    return ["latest"] + (["best"] if improved else []) + ([str(epoch)] if epoch % save_epoch_freq == 0 else [])


# The NPR network's float32 weights and BatchNorm statistics (tests/test_checkpoint.py checks it). A
# training checkpoint holds them about four times (weights, Adam's moments, the moving average): a
# file that declares far more is no checkpoint of this network, refused before it is read whole.
WEIGHT_BYTES = 5_791_492
MAX_CHECKPOINT_BYTES = 32 * WEIGHT_BYTES
# Containers nested deeper than this (a state dict is two levels, a training checkpoint five)
# are refused: walking them would exhaust Python's recursion limit.
MAX_NESTING = 32


class Checkpoint(NamedTuple):
    """What ``read_checkpoint`` read: the contents, and the SHA-256 (hex) of the bytes loaded."""
    contents: object
    sha256: str


def declared_size(path, data):
    """The bytes the checkpoint will take once loaded: the sizes its zip directory declares (a
    deflated record can hold gigabytes in a small file); for older formats, the file's own."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return len(data)


def nesting_depth(obj, limit=MAX_NESTING):
    """How deeply containers nest in ``obj`` (a tensor: 0), counted to ``limit + 1`` without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        elif isinstance(item, argparse.Namespace):
            children = list(vars(item).values())
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > limit:
            return deepest
        stack += [(c, depth + 1) for c in children]
    return deepest


def read_checkpoint(path, map_location="cpu"):
    """A ``Checkpoint`` read with ``weights_only=True`` and bounded (its declared size against
    ``MAX_CHECKPOINT_BYTES`` before loading, its nesting after); every failure is one line."""
    require_checkpoint(path)
    limit = f"{MAX_CHECKPOINT_BYTES / 1e6:.0f} MB, {MAX_CHECKPOINT_BYTES // WEIGHT_BYTES} times the NPR network's " \
            "weights"
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"refusing to load '{path}': the file is {os.fstat(f.fileno()).st_size / 1e6:.0f}"
                                      f" MB, over the {limit}; not a checkpoint of this network")
            data = f.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}' ({e.strerror or e})") from None
    size = declared_size(path, data)
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"refusing to load '{path}': its records declare {size / 1e6:.0f} MB, over the "
                              f"{limit}; not a checkpoint of this network")
    contents = torch_load(path, io.BytesIO(data), map_location)
    if nesting_depth(contents) > MAX_NESTING:
        raise CheckpointError(f"refusing to load '{path}': it nests containers more than {MAX_NESTING} deep; not a "
                              "checkpoint of this network")
    return Checkpoint(contents, hashlib.sha256(data).hexdigest())


def require_checkpoint(path, what="", hint=""):
    """``path``, when a checkpoint file may be there; else one ``CheckpointError`` in one style:
    ``[<what>: ]no checkpoint at '<path>' (<what is there>); <hint, or: check the path>``."""
    kind = file_kind(path)
    if kind != "file":
        shown = {"nothing": "nothing there", "a folder": "a folder: give the .pth file in it"}.get(kind, kind)
        raise CheckpointError(f"{what + ': ' if what else ''}no checkpoint at '{path}' ({shown}); "
                              f"{hint or 'check the path'}")
    return path


def load_checkpoint(path, map_location="cpu"):
    """The contents of a checkpoint, read by ``read_checkpoint``."""
    return read_checkpoint(path, map_location).contents


def torch_load(path, f, map_location):
    """``torch.load(f, weights_only=True)`` of the bytes of ``path``; every failure is one line."""
    try:
        # An argparse.Namespace only sets attributes: allowed, so that SAFE's checkpoints load.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4": refused below if unsafe
            return torch.load(f, map_location=map_location, weights_only=True)
    except RecursionError:
        raise CheckpointError(f"refusing to load '{path}': it nests containers too deeply to read; not a checkpoint "
                              "of this network") from None
    except pickle.UnpicklingError:
        # PyTorch's own message suggests weights_only=False, i.e. running the file's code: not repeated here.
        raise CheckpointError(f"refusing to load '{path}': it holds objects other than tensors and plain "
                              "containers, and unpickling them could run code. If the file comes from a source "
                              "you trust, re-save its weights there as a plain state dict "
                              "(torch.save(model.state_dict(), 'weights.pth')) and load that file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        why = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint (truncated or corrupt?): {why}") from None


def extract_state_dict(ckpt, ema=False):
    """The model's state dict from any supported checkpoint layout, prefixes removed.

    ``ema=True`` takes the moving-average weights that ``train.py --ema`` stores (``networks.ema``).
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"expected a dict of tensors, got {type(ckpt).__name__}")
    if ema:
        if not isinstance(ckpt.get(EMA_WEIGHTS_KEY), dict):
            raise CheckpointError(f"the checkpoint holds no moving-average weights ('{EMA_WEIGHTS_KEY}'): train with "
                                  "--ema, or evaluate without --ema_weights")
        ckpt = ckpt[EMA_WEIGHTS_KEY]
    for key in WRAPPER_KEYS:
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    state = {}
    for k, v in ckpt.items():
        if not isinstance(k, str):
            raise CheckpointError(f"the checkpoint's keys are not parameter names (found {type(k).__name__} {k!r}): "
                                  "not a model state dict")
        for prefix in KEY_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    if not any(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("the checkpoint holds no tensors: not a model state dict")
    return state


def checkpoint_operator(ckpt, state):
    """The artifact operator a checkpoint was trained with: stored by train.py as ``operator``;
    otherwise told by the head, since only SAFE's model has a two-class ``fc1`` (its release,
    ``checkpoint/checkpoint-best.pth`` in Ouxiang-Li/SAFE) and ``NPR.pth`` has one logit
    (``operators.operator_for_head``)."""
    stored = ckpt.get("operator") if isinstance(ckpt, dict) else None
    if stored is not None:
        return stored
    fc = state.get("fc1.weight")
    return operator_for_head(fc.shape[0] if torch.is_tensor(fc) and fc.dim() == 2 else 1)


def stored_threshold(ckpt, key, path):
    """The decision threshold a checkpoint stores under ``key`` (train.py's, a probability), or
    None. A value that is no probability (NaN, 2.0, text: a hand-edited or foreign file) is
    ignored with one warning, never used as a verdict's rule."""
    value = ckpt.get(key) if isinstance(ckpt, dict) else None
    if value is None:
        return None
    number = value.item() if torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point() else value
    if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number) \
            and 0 <= number <= 1:
        return float(number)
    log.warning("checkpoint '%s' stores a threshold that is not a probability (%s): ignored, as if it stored none",
                path, str(value)[:40])
    return None


def unusable_tensor(value):
    """Why ``value`` cannot be a weight of the model (not a tensor, no values, sparse, complex,
    quantized), or None for an ordinary dense tensor."""
    if not torch.is_tensor(value):
        return f"a {type(value).__name__}, not a tensor"
    for wrong, why in ((value.is_meta, "a tensor without values (meta)"),
                       (value.layout != torch.strided, f"a {str(value.layout).replace('torch.', '')} tensor"),
                       (value.is_complex(), "complex values"), (value.is_quantized, "a quantized tensor")):
        if wrong:
            return why
    return None


def load_state_dict_strict(model, state, source="checkpoint"):
    """``load_state_dict(strict=True)`` with an error that lists what does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                   if k in state and torch.is_tensor(state[k]) and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        def show(items):
            return ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "") or "none"
        raise CheckpointError(f"{source} does not match the NPR network (another architecture?): "
                              f"missing keys: {show(missing)}; unexpected keys: {show(unexpected)}; "
                              f"wrong shapes: {show(wrong_shape)}")
    odd = [(k, why) for k, why in ((k, unusable_tensor(v)) for k, v in state.items()) if why]
    if odd:
        raise CheckpointError(f"{source} holds {len(odd)} entr{'y' if len(odd) == 1 else 'ies'} that cannot be "
                              f"weights (the first: {odd[0][0]}, {odd[0][1]}): not a model state dict")
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise CheckpointError(f"{source} holds NaN or infinite values in {len(broken)} tensor(s) ({broken[0]} first): "
                              "the training that wrote it diverged; use an earlier checkpoint")
    model.load_state_dict(state, strict=True)
    return model


# ----------------------------------------------------------------------------- resuming

COUNTERS = ("epoch", "step_in_epoch", "total_steps", "epochs_no_improve")  # never negative in a real run


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def optimizer_problem(saved, optimizer):
    """What keeps the optimizer state ``saved`` from fitting ``optimizer`` (its groups, its
    parameters, the shapes of its per-parameter tensors), or None."""
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)):
        return "its 'optimizer' entry is not an optimizer's state (no 'state' and 'param_groups')"
    own = optimizer.param_groups
    if len(saved["param_groups"]) != len(own) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) and len(g["params"]) == len(o["params"])
            for g, o in zip(saved["param_groups"], own)):
        return f"its optimizer state is for other parameters (not {len(own)} group(s) of " \
               f"{', '.join(str(len(o['params'])) for o in own)})"
    for group, mine in zip(saved["param_groups"], own):
        for key, param in zip(group["params"], mine["params"]):
            entry = saved["state"].get(key, {})
            if not isinstance(entry, dict):
                return f"its optimizer state for parameter {key} is a {type(entry).__name__}"
            for name, value in entry.items():
                if not torch.is_tensor(value) or (value.dim() and value.shape != param.shape):
                    shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    return f"its optimizer's '{name}' for a weight of shape {tuple(param.shape)} is {shape}"
    return None


def rng_problem(rng):
    """What keeps ``rng`` from being the random states a training checkpoint stores, or None."""
    if not isinstance(rng, dict):
        return "its 'rng' entry is not the random states train.py stores"
    checks = (
        ("torch", lambda v: torch.is_tensor(v) and v.dtype == torch.uint8 and v.numel() == torch.get_rng_state().numel(),
         f"torch's generator state ({torch.get_rng_state().numel()} bytes)"),
        ("numpy", lambda v: torch.is_tensor(v) and v.numel() == 624 and not v.is_floating_point(),
         "NumPy's 624 words"),
        ("numpy_pos", lambda v: is_count(v) and v <= 624, "a position in NumPy's 624 words"),
        ("python", lambda v: isinstance(v, (list, tuple)) and len(v) == 625 and all(is_count(x) for x in v),
         "Python's 625 words"),
        ("cuda", lambda v: isinstance(v, (list, tuple)) and all(torch.is_tensor(x) and x.dtype == torch.uint8
                                                                 for x in v), "CUDA's generator states"),
    )
    for key, fits, what in checks:
        if key not in rng:
            return f"its random states lack '{key}'"
        if not fits(rng[key]):
            return f"its random state '{key}' is not {what}"
    return None


def resume_problem(ckpt, optimizer):
    """What keeps the training checkpoint ``ckpt`` from resuming into ``optimizer`` (an entry
    missing, of the wrong kind or shape, a counter no run reaches), or None. The weights are
    checked when they are loaded (``load_state_dict_strict``)."""
    for key in ("model", "optimizer", "rng", *COUNTERS[:3]):
        if key not in ckpt:
            return f"it has no '{key}' entry"
    for key in COUNTERS:
        if key in ckpt and not is_count(ckpt[key]):
            return f"its counter '{key}' is {str(ckpt[key])[:40]}, not a whole number >= 0"
    if ckpt["total_steps"] < ckpt["step_in_epoch"]:
        return f"it counts {ckpt['total_steps']} steps in all but {ckpt['step_in_epoch']} in its epoch"
    best = ckpt.get("best_ap", -1.0)
    if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best):
        return f"its 'best_ap' is {str(best)[:40]}, not a number"
    for key, kind in (("train_images", str), ("scaler", dict), (EMA_WEIGHTS_KEY, dict), ("opt", dict)):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], kind):
            return f"its '{key}' entry is a {type(ckpt[key]).__name__}"
    if not (is_count(ckpt.get("world_size", 1)) and ckpt.get("world_size", 1) >= 1):
        return f"its 'world_size' is {str(ckpt['world_size'])[:40]}, not a number of processes"
    return optimizer_problem(ckpt["optimizer"], optimizer) or rng_problem(ckpt["rng"])


def check_resume_position(state, batch_size_before, *, niter, batch_size, images, n_images, refuse, ends=()):
    """Where a resumed run goes on: inside an epoch, from the image it stopped at, in batches of the
    size it ran with (``batch_size_before``; another ``batch_size`` is refused, naming the epoch
    ``ends``); a changed training list (``images`` of ``n_images``) is said. A position no run
    reaches (past ``niter``, past an epoch's end) is ``refuse``d."""
    if state.epoch > niter:
        refuse(f"it is at epoch {state.epoch}, past --niter {niter} (raise --niter to train on)")
    if state.step_in_epoch and batch_size_before != batch_size:
        raise UserError(f"--batch_size {batch_size}: the run stopped {state.step_in_epoch} steps into epoch "
                        f"{state.epoch} with batches of {batch_size_before}; resume with --batch_size "
                        f"{batch_size_before}" + (f", or from the end of an epoch with --epoch {ends[0]}" if ends else ""))
    if state.train_images in (None, images) and state.step_in_epoch * batch_size >= max(n_images, 1):
        refuse(f"it is {state.step_in_epoch} steps into epoch {state.epoch}, where an epoch of its {n_images} "
               f"images has {-(-n_images // batch_size)} steps of {batch_size}")
    if state.train_images not in (None, images):
        log.warning("The training images changed since the checkpoint (%s images then, %s now)%s",
                    state.train_images.split(":")[0], images.split(":")[0],
                    f": the rest of epoch {state.epoch} follows a new order, so some of its images may be seen twice "
                    "or not at all" if state.step_in_epoch else "")


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


def resume_training(path, model, optimizer, scaler=None, ema=None, *, new_optim=False, others=(), position=None):
    """Load the training checkpoint at ``path`` into the objects; (its ``TrainState``, the dict).
    Entries are checked first (``resume_problem``), then ``position(state, ckpt, refuse)``; what
    cannot be resumed is one line naming the problem and the run's ``others`` (``--epoch`` values)."""
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
    if position is not None:
        position(state, ckpt, refuse)
    try:  # what resume_problem does not foresee is still one line
        if not new_optim:
            optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load(ckpt)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        refuse(f"{type(e).__name__}: {one_line(e)[:200]}")
    return state, ckpt
