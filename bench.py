"""Measure how fast this codebase trains and evaluates, on the CPU and on CUDA when present.

    python bench.py                  # full run (docs/speed.md gives its run time and results)
    python bench.py --quick          # a short smoke run (numbers are rougher)
    python bench.py --only malloc,scripts,scan,photo   # some groups only

What it measures, per device (images per second, peak memory):

* model only: forward and one training step (forward, backward, Adam) on tensors already on
  the device, at 224 px and at the mini benchmark's 40 px. ``plain`` is an fp32 contiguous model
  under ``no_grad``; ``default`` is what ``test.py`` runs (BatchNorm folded, channels-last,
  ``inference_mode``); ``amp`` (CUDA) adds float16 autocast; ``compile`` needs ``--compile``.
  Training steps are labelled ``contiguous`` (what ``train.py`` runs by default, step for step
  the reference) and ``channels_last`` (``--train_channels_last``).
* end to end: evaluation through the ``test.py`` path (``engine.evaluate_folder``) and training
  through the ``train.py`` path (its loader and ``engine.train_one_epoch``), on a generated folder of
  PNG images (256 px for the 224 px runs, 48 px for the mini size). ``plain`` evaluation is the
  reference's pipeline: torchvision Resize / CenterCrop / ToTensor / Normalize in the workers,
  float batches, the plain model.
* artifact operators: the rows above for ``--operator dwt`` (SAFE's wavelet sub-band) beside
  NPR's residual, and the operator alone on a batch; the summary gives the cost ratios.
* efficiency = end-to-end / model-only throughput of the same configuration.
* scaling: peak memory of an evaluation over N and over 4N images.
* loader: the training loader alone (decoding, augmentations, collation), no model.
* malloc (CPU): model, evaluation and training rows with and without ``util.keep_freed_memory``.
* scripts (CPU): ``test.py`` (with and without it) and ``predict.py`` as whole processes on the
  same 400 PNGs of 256 px, pixels as they are: wall, user and system time, peak RSS.
* scan (CPU): peak RSS of ``predict.py`` over 10,000 and 100,000 small images.
* photo (CPU): peak RSS of ``predict.py`` scoring one 4000x3000 and one 8000x6000 JPEG.

Peak memory is the process's peak resident set (CPU, main process; data-loader workers are
separate processes) or ``torch.cuda.max_memory_allocated`` (CUDA). Results are printed as a
table and written to ``--output/bench.json``.
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from bootstrap import RESAMPLES, add_intervals, comparison_rows, metrics_of
from data.cache import cached_train_dataset
from data.discovery import make_samples
from data.loaders import BinaryImageDataset, EpochSampler, default_workers, make_train_loader
from data.transforms import EvalTransform, TrainTransform, normalize_batch
from engine import EvalConfig, StepConfig, StepContext, evaluate_folder, train_one_epoch
from metrics import mean_row
from networks import DEFAULT_OPERATOR, OPERATORS, batch_probs, prepare_model, resnet50
from networks.checkpoint import TrainState
from options import MINI_CHECKPOINT, train_parser
from report import format_table
from devices import AMP_DTYPE, keep_freed_memory
from files import check_output, write_json_atomically
from util import OneLineErrorParser, run_cli, UserError

ROOT = os.path.dirname(os.path.abspath(__file__))
NPR = DEFAULT_OPERATOR

# Row kinds: the "what" of a row. The summary, the consistency check and gpu_check.py find rows
# by these (``find``).
OPERATOR_ONLY, MODEL_FORWARD, MODEL_TRAIN_STEP = "operator only", "model forward", "model train step"
EVAL_E2E, TRAIN_E2E, LOADER_ONLY = "end-to-end eval", "end-to-end train", "train loader only"
EVAL_SCALING, PHOTO, SCAN = "eval memory scaling", "predict.py photo", "predict.py scan"
TEST_SCRIPT, PREDICT_SCRIPT = "test.py", "predict.py"


# ----------------------------------------------------------------------------- measuring

def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_times():
    """(user, system) CPU seconds of this process and its finished children (data-loader workers)."""
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + b.ru_utime, a.ru_stime + b.ru_stime


def sys_share(before, after):
    """{'cpu_user_s', 'cpu_sys_s', 'sys_pct'} between two ``cpu_times()``."""
    user, system = after[0] - before[0], after[1] - before[1]
    return {"cpu_user_s": user, "cpu_sys_s": system, "sys_pct": 100.0 * system / max(user + system, 1e-9)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, seconds, min_iters=3):
    """(images per second of ``fn`` -- which returns the number of images it processed --, peak
    memory, and the CPU time split of ``sys_share``)."""
    fn()  # warm-up (cuDNN autotuning, allocator, lazy init)
    sync(device)
    reset_peak_memory(device)
    n_img, iters, start, cpu = 0, 0, time.perf_counter(), cpu_times()
    while iters < min_iters or time.perf_counter() - start < seconds:
        n_img += fn()
        iters += 1
    sync(device)
    return n_img / (time.perf_counter() - start), peak_memory_mb(device), sys_share(cpu, cpu_times())


# ----------------------------------------------------------------------------- data

def photo_like(rng, width, height, grain=8, noise=6):
    """An RGB image with natural-image-like statistics: smooth content from noise up-sampled
    ``grain`` times, plus fine noise of +-``noise`` (decoding cost depends on it)."""
    coarse = Image.fromarray(rng.integers(0, 256, (height // grain + 1, width // grain + 1, 3), dtype=np.uint8))
    arr = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(arr + rng.integers(-noise, noise + 1, arr.shape), 0, 255).astype(np.uint8))


def write_png_folder(root, n, size, seed=0):
    """``n`` photo-like PNGs (half real, half fake) of ``size`` px."""
    rng = np.random.default_rng(seed)
    for label, name in ((0, "0_real"), (1, "1_fake")):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n // 2 if label == 0 else n - n // 2):
            photo_like(rng, size, size).save(os.path.join(root, name, f"{i:05d}.png"))
    return root


class ReferenceEvalDataset(torch.utils.data.Dataset):
    """The reference's evaluation input pipeline: float tensors made in the workers."""

    def __init__(self, samples, load_size, crop_size):
        import torchvision.transforms as T  # here: importing torchvision raises the peak memory of every row
        self.samples = samples
        self.transform = T.Compose([T.Resize((load_size, load_size)), T.CenterCrop(crop_size), T.ToTensor(),
                                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(Image.open(path).convert("RGB")), label


@torch.no_grad()
def plain_evaluate_folder(model, root, device, batch_size, load_size, crop_size, num_workers):
    samples = make_samples(root)
    loader = torch.utils.data.DataLoader(ReferenceEvalDataset(samples, load_size, crop_size), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    probs = [torch.sigmoid(model(x.to(device))).flatten().cpu() for x, _ in loader]
    return torch.cat(probs)


# ----------------------------------------------------------------------------- benchmarks

def make_model(device, seed=0, operator=NPR):
    torch.manual_seed(seed)
    return resnet50(operator=operator).to(device).eval()


def bench_operator(device, size, batch, seconds, operator):
    """The artifact operator alone (what the first convolution sees), on a batch on the device."""
    model = make_model(device, operator=operator)
    x = normalize_batch(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).to(device))

    def run():
        with torch.inference_mode():
            model.artifact(x)
        return batch

    ips, mem, cpu = timed(run, device, seconds)
    return [{"device": device.type, "what": OPERATOR_ONLY, "operator": operator, "variant": "default",
             "size": size, "batch": batch, "images_per_s": ips, "peak_mem_mb": mem, **cpu}]


def bench_model(device, size, batch, seconds, variants, operator=NPR):
    """Model-only forward and training-step throughput for each variant."""
    rows = []
    x_cpu = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    x = normalize_batch(x_cpu.to(device))
    for variant in variants:
        base = make_model(device, operator=operator)
        amp = variant == "amp"
        if variant == "plain":
            fwd_model, ctx, xin = base, torch.no_grad, x
        else:
            fwd_model = prepare_model(base, device, channels_last=True, fold_bn=True,
                                      compile_model=variant == "compile")
            ctx, xin = torch.inference_mode, x.contiguous(memory_format=torch.channels_last)

        def forward():
            if variant == "plain":
                with ctx():
                    fwd_model(xin)
            else:  # what every evaluation path runs: CPU sub-batches, autocast with amp
                batch_probs(fwd_model, xin, channels_last=True, amp=amp)
            return batch

        ips, mem, cpu = timed(forward, device, seconds)
        rows.append({"device": device.type, "what": MODEL_FORWARD, "operator": operator, "variant": variant,
                     "size": size, "batch": batch, "images_per_s": ips, "peak_mem_mb": mem, **cpu})

        train_model = make_model(device, operator=operator).train()
        if variant != "plain":
            train_model = train_model.to(memory_format=torch.channels_last)
        if variant == "compile":
            train_model = torch.compile(train_model)
        opt = torch.optim.Adam(train_model.parameters(), lr=1e-4)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        scaler = torch.amp.GradScaler(device.type, enabled=amp)  # a pass-through when disabled
        tb = max(1, batch // 2)  # the paper trains with batch 32
        xt = xin[:tb].clone() if variant == "plain" else xin[:tb].contiguous(memory_format=torch.channels_last)
        y = (torch.arange(tb, device=device) % 2).float()

        def step():
            with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=amp):
                logits = train_model(xt).squeeze(1)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return tb

        ips, mem, cpu = timed(step, device, seconds)
        # Training runs contiguous by default (step-for-step the reference); channels-last is --train_channels_last.
        train_variant = {"plain": "contiguous", "default": "channels_last"}.get(variant, variant)
        rows.append({"device": device.type, "what": MODEL_TRAIN_STEP, "operator": operator,
                     "variant": train_variant, "size": size, "batch": tb, "images_per_s": ips, "peak_mem_mb": mem,
                     **cpu})
    return rows


def bench_eval(device, folder, load_size, crop_size, batch, workers, variants, operator=NPR):
    rows = []
    n = len(make_samples(folder))
    for variant in variants:
        base = make_model(device, operator=operator)
        if variant == "plain":
            def run():
                return plain_evaluate_folder(base, folder, device, batch, load_size, crop_size, workers)
        else:
            model = prepare_model(base, device, compile_model=variant == "compile")

            cfg = EvalConfig(device=device, batch_size=batch, num_workers=workers, amp=variant == "amp")

            def run():
                return evaluate_folder(model, folder, EvalTransform(load_size, crop_size), cfg)["y_prob"]
        run()  # warm-up: page cache, lazy init
        reset_peak_memory(device)
        start, cpu = time.perf_counter(), cpu_times()
        run()
        sync(device)
        ips = n / (time.perf_counter() - start)
        rows.append({"device": device.type, "what": EVAL_E2E, "operator": operator, "variant": variant,
                     "size": crop_size, "batch": batch, "workers": workers, "images": n, "images_per_s": ips,
                     "peak_mem_mb": peak_memory_mb(device), **sys_share(cpu, cpu_times())})
    return rows


def bench_train(device, dataroot, load_size, crop_size, batch, workers, variants, cache_root=None):
    """One epoch through train.py's loader and ``train_one_epoch`` (after a warm-up epoch)."""
    rows = []
    for variant in variants:
        channels_last = variant == "channels_last"
        samples = make_samples(os.path.join(dataroot, "train"))
        transform = TrainTransform(load_size, crop_size)
        if variant == "cache":
            dataset = cached_train_dataset(cache_root, samples, transform, num_workers=workers)
        else:
            dataset = BinaryImageDataset(samples, transform)
        sampler = EpochSampler(dataset.labels, seed=train_parser().get_default("seed"))
        loader = make_train_loader(dataset, batch, sampler, workers, device)
        model = make_model(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        step_cfg = StepConfig(channels_last=channels_last, amp=variant == "amp", loss_freq=10**6, save_latest_freq=10**6)
        scaler = torch.amp.GradScaler("cuda") if variant == "amp" and device.type == "cuda" else None
        ctx = StepContext(device=device, optimizer=optimizer, loss_fn=torch.nn.BCEWithLogitsLoss(), config=step_cfg,
                          scaler=scaler)

        def epoch(e):
            sampler.set_epoch(e)
            train_one_epoch(model, loader, TrainState(epoch=e), ctx)

        epoch(0)  # warm-up: worker start, page cache
        sync(device)
        reset_peak_memory(device)
        start, cpu = time.perf_counter(), cpu_times()
        epoch(1)
        sync(device)
        ips = len(samples) / (time.perf_counter() - start)
        rows.append({"device": device.type, "what": TRAIN_E2E, "operator": NPR, "variant": variant,
                     "size": crop_size, "batch": batch, "workers": workers, "images": len(samples), "images_per_s": ips,
                     "peak_mem_mb": peak_memory_mb(device), **sys_share(cpu, cpu_times())})
    return rows


def bench_loader(device, dataroot, load_size, crop_size, batch, workers):
    """The training loader alone (decoding, train.py's augmentations, collation; pinned memory
    for CUDA), no model: how many images per second it can feed."""
    samples = make_samples(os.path.join(dataroot, "train"))
    sampler = EpochSampler([label for _, label in samples], seed=0)
    loader = make_train_loader(BinaryImageDataset(samples, TrainTransform(load_size, crop_size)), batch, sampler,
                               workers, device)
    for e in range(2):  # epoch 0 warms up the workers and the page cache
        sampler.set_epoch(e)
        start, cpu, n = time.perf_counter(), cpu_times(), 0
        for b in loader:
            n += len(b.labels)
    return [{"device": device.type, "what": LOADER_ONLY, "operator": "-", "variant": "default",
             "size": crop_size, "batch": batch, "workers": workers, "images": n,
             "images_per_s": n / (time.perf_counter() - start), "peak_mem_mb": None, **sys_share(cpu, cpu_times())}]


def bench_scaling(device, folder, mult, size=64):
    """Peak memory of one evaluation of ``folder`` (workers 0: everything in this process)."""
    model = prepare_model(make_model(device), device)
    n = len(make_samples(folder))
    start = time.perf_counter()
    evaluate_folder(model, folder, EvalTransform(size, size - 8), EvalConfig(device=device, batch_size=64))
    return [{"device": device.type, "what": EVAL_SCALING, "operator": NPR, "variant": f"{mult}x",
             "size": size - 8,
             "batch": 64, "images": n, "images_per_s": n / (time.perf_counter() - start),
             "peak_mem_mb": peak_memory_mb(device)}]


# Runs a script in a grandchild and reports its rusage: a child started straight from this
# (large) process would inherit this process's peak RSS, which Linux carries across exec.
RUSAGE_SHIM = """
import json, os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), ru.ru_utime, ru.ru_stime, ru.ru_maxrss]))
"""


def run_script(argv, env=None):
    """(wall s, user s, sys s, peak RSS MiB) of one whole script process and its workers."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", RUSAGE_SHIM, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                             env={**os.environ, **(env or {})}, text=True)
        wall = time.perf_counter() - start
        code, user, system, maxrss = json.loads(out.stdout.strip().splitlines()[-1])
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv[:1])} failed: {err.read().decode(errors='replace')[-2000:]}")
    return wall, user, system, maxrss / 1024


def script_row(what, variant, images, size, argv, env=None):
    wall, user, system, rss = run_script(argv, env)
    return {"device": "cpu", "what": what, "operator": NPR, "variant": variant, "size": size, "images": images,
            "images_per_s": images / wall, "wall_s": wall, "peak_mem_mb": rss, **sys_share((0, 0), (user, system))}


def bench_scripts(dataroot, checkpoint, n, batch):
    """test.py and predict.py as a user runs them, whole processes, on the same folder of 256 px
    PNGs with the pixels as they are: test.py with glibc as is and as the scripts set it up
    (``util.keep_freed_memory``), then predict.py."""
    common = ["--model_path", checkpoint, "--gpu_ids", "-1", "--batch_size", str(batch)]
    test = ["test.py", "--dataroot", dataroot, "--no_resize", "--no_crop", "--results_dir",
            os.path.join(dataroot, "results"), *common]
    leaf = os.path.join(dataroot, "suite", "gen")
    return [script_row(TEST_SCRIPT, "glibc as is", n, 256, test, {"NPR_ALLOCATOR": "system"}),
            script_row(TEST_SCRIPT, "default", n, 256, test),
            script_row(PREDICT_SCRIPT, "default", n, 256,
                       ["predict.py", leaf, "--output", os.path.join(dataroot, "pred", "p"), *common])]


def bench_photo(root, checkpoint, sizes):
    """Peak RSS of predict.py scoring one photo-like JPEG of each of ``sizes`` (above the pixel
    budget it is scored in tiles, so memory should not grow with the photo beyond decoding it)."""
    rows = []
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    for w, h in sizes:
        path = os.path.join(root, f"photo_{w}x{h}.jpg")
        photo_like(rng, w, h, grain=16, noise=4).save(path, quality=92)
        rows.append(script_row(PHOTO, f"{w}x{h} JPEG", 1, max(w, h),
                               ["predict.py", path, "--model_path", checkpoint, "--gpu_ids", "-1",
                                "--output", os.path.join(root, f"p{w}")]))
    return rows


def bench_tiles(model_path, scale=3):
    """Tile verdict against whole-image verdict where both fit: scikit-image's photographs
    enlarged ``scale`` times (nearest-neighbour, which leaves up-sampling traces, and bicubic)
    above the pixel budget, scored whole (the model's own forward) and in tiles (``batch_probs``)."""
    from skimage import data as skdata

    from networks import load_detector
    from networks.detector import PIXEL_BUDGET
    model = prepare_model(load_detector(model_path, device="cpu"), torch.device("cpu"))
    names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
             "motorcycle_left")
    rows = []
    for name in names:
        try:
            img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        except (AttributeError, ImportError, OSError, ValueError):  # not shipped by this scikit-image (or not offline)
            continue
        for how, method in (("nearest", Image.NEAREST), ("bicubic", Image.BICUBIC)):
            big = img.resize((img.width * scale, img.height * scale), method)
            if big.width * big.height <= PIXEL_BUDGET:
                continue
            x = torch.from_numpy(np.array(big)).permute(2, 0, 1)[None]
            with torch.inference_mode():
                whole = torch.sigmoid(model(normalize_batch(x).contiguous(memory_format=torch.channels_last))).item()
            tiled = batch_probs(model, x).item()
            rows.append({"image": f"{name} x{scale} {how}", "size": f"{big.width}x{big.height}", "whole": whole,
                         "tiled": tiled, "abs_diff": abs(whole - tiled),
                         "same_verdict": (whole > 0.5) == (tiled > 0.5)})
    return rows


def bench_scan(root, checkpoint, counts, size=16):
    """Peak RSS of predict.py scanning folders of ``counts`` small images: flat when rows stream."""
    rows = []
    for n in counts:
        folder = write_png_folder(os.path.join(root, f"scan{n}"), n, size, seed=n)
        rows.append(script_row(SCAN, f"{n} images", n, size,
                               ["predict.py", folder, "--model_path", checkpoint, "--gpu_ids", "-1",
                                "--output", os.path.join(root, f"scan{n}", "p")]))
        shutil.rmtree(folder)
    return rows


# ----------------------------------------------------------------------------- isolation

def synthetic_suite(rng, name, sizes, thresholds=0.3):
    """Result rows of a synthetic suite (generators of ``sizes`` images, half real, scored by a
    detector of random separation), as ``engine.evaluate_suite`` returns them."""
    rows = []
    for g, n in enumerate(sizes):
        labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(np.int64)
        probs = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + np.where(labels == 1, 1, -1) * rng.uniform(0.5, 2.5))))
        m = {k: float(v[0]) for k, v in metrics_of(labels, probs, thresholds).items()}
        rows.append({"suite": name, "generator": f"g{g}", "y_true": labels, "y_prob": probs, "threshold": thresholds,
                     **m})
    return rows


def bench_intervals(model_path, resamples, repeats):
    """What the 95 % intervals cost. test.py on NPR-mini (the main job) with ``--bootstrap 0`` and
    with ``resamples``, whole processes alternating, ``repeats`` times each; bootstrap.py's
    intervals and a paired comparison on a synthetic score set the size of the full benchmark
    (28 generators of 4,000 to 10,000 images, in 4 suites); scipy.stats.bootstrap (percentile, the
    classes resampled apart, scikit-learn's AP) on one generator of 10,000 images, for scale."""
    from scipy import stats
    from sklearn.metrics import average_precision_score
    out = {"resamples": resamples}
    with tempfile.TemporaryDirectory(prefix="npr-intervals-") as tmp:
        walls = {0: [], resamples: []}
        for _ in range(repeats):
            for n in (0, resamples):
                walls[n].append(run_script(["test.py", "--model_path", model_path, "--bootstrap", str(n),
                                            "--results_dir", os.path.join(tmp, str(n))])[0])
    out["main_job_s"] = {str(n): sorted(v)[len(v) // 2] for n, v in walls.items()}
    out["main_job_added_pct"] = 100 * (out["main_job_s"][str(resamples)] / out["main_job_s"]["0"] - 1)
    rng = np.random.default_rng(0)
    mini = synthetic_suite(rng, "mini", [400] * 5)  # the main job's table: 5 generators of 400 images
    start = time.perf_counter()
    add_intervals(mini, mean_row(mini, "mini"), resamples)
    out["main_job_intervals_s"] = time.perf_counter() - start
    sizes = np.linspace(4000, 10000, 28).astype(int)
    suites = [synthetic_suite(rng, f"S{i}", sizes[i::4]) for i in range(4)]
    out["full_images"] = int(sizes.sum())
    start = time.perf_counter()
    for rows in suites:
        add_intervals(rows, mean_row(rows, rows[0]["suite"]), resamples)
    out["full_intervals_s"] = time.perf_counter() - start
    shared = {("none", r["suite"], r["generator"]): (r["y_true"], r["y_prob"][None], np.clip(
        r["y_prob"][None] + rng.normal(0, 0.02, len(r["y_prob"])), 0, 1), True, {}) for rows in suites for r in rows}
    start = time.perf_counter()
    comparison_rows(shared, resamples)
    out["full_compare_s"] = time.perf_counter() - start
    big = suites[3][-1]
    real, fake = big["y_prob"][big["y_true"] == 0], big["y_prob"][big["y_true"] == 1]

    def ap(r, f):
        return average_precision_score(np.r_[np.zeros(len(r)), np.ones(len(f))], np.r_[r, f])
    start = time.perf_counter()
    stats.bootstrap((real, fake), ap, vectorized=False, paired=False, n_resamples=resamples, method="percentile",
                    rng=np.random.default_rng(0))
    out["scipy_one_generator_s"], out["scipy_one_generator_images"] = time.perf_counter() - start, len(big["y_prob"])
    return out


def _child(queue, fn, args, allocator):
    try:
        if allocator == "system":
            os.environ["NPR_ALLOCATOR"] = "system"
        keep_freed_memory()  # as every script does at start, unless NPR_ALLOCATOR=system
        rows = fn(*args)
        if allocator == "system":
            for r in rows:
                r["variant"] += " (glibc as is)"
        queue.put(("ok", rows))
    except BaseException as e:  # report, never hang the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def isolated(fn, *args, allocator="scripts"):
    """Run ``fn(*args)`` in a fresh process, so that each peak-memory figure is its own and not
    the high-water mark of everything measured before (freed memory stays in the allocator).
    The process sets up glibc as the scripts do (``util.keep_freed_memory``); with
    ``allocator='system'`` it leaves glibc's defaults, and the rows' variant says so."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args, allocator))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark {fn.__name__} failed: {value}")
    return value


# ----------------------------------------------------------------------------- groups

@dataclass
class Run:
    """What every group of one device reads: the settings, the folders it shares with the other
    groups (generated on first use), and the groups selected."""
    device: torch.device
    args: argparse.Namespace
    tmp: str
    operators: list
    selected: list
    info: dict
    made: dict = field(default_factory=dict)

    @property
    def cuda(self):
        return self.device.type == "cuda"

    @property
    def workers(self):
        return default_workers(self.args.num_threads, self.device)

    @property
    def seconds(self):
        return 1.0 if self.args.quick else self.args.seconds

    def variants(self, operator, evaluation=False):
        """NPR's residual gets every variant; another operator those its cost ratios need."""
        v = ["plain", "default"] + (["amp"] if self.cuda else []) + (["compile"] if self.args.compile else [])
        if operator == NPR:
            return v
        return [x for x in v if x != "compile" and not (evaluation and x == "plain")]

    def folder(self, name):
        """A generated folder of PNGs, written once: eval256 / eval48 (evaluation), train256 / train48
        (training, under train/)."""
        if not self.made:
            a, quick = self.args, self.args.quick
            n_eval = a.eval_images or (8 if quick else (64 if self.cuda else 4) * a.batch_size)
            n_train = a.train_images or (8 if quick else (64 if self.cuda else 2) * a.batch_size)
            for key, sub, n, size, seed in (("eval256", "", n_eval, 256, 0), ("eval48", "", n_eval * (1 if quick else 16),
                                            48, 0), ("train256", "train", n_train, 256, 5),
                                            ("train48", "train", n_train * 8, 48, 6)):
                self.made[key] = os.path.join(self.tmp, key)
                write_png_folder(os.path.join(self.tmp, key, sub), n, size, seed)
        return self.made[name]

    def checkpoint(self):
        path = os.path.join(os.path.dirname(self.tmp), "model.pth")
        if not os.path.isfile(path):
            torch.save({"model": make_model(torch.device("cpu")).state_dict()}, path)
        return path


def group_model(r):
    print(f"[{r.device.type}] model only ...", flush=True)
    rows = []
    for size in (224, 40):
        for op in r.operators:
            rows += isolated(bench_operator, r.device, size, r.args.batch_size, r.seconds, op)
            for v in r.variants(op):
                rows += isolated(bench_model, r.device, size, r.args.batch_size, r.seconds, [v], op)
    return rows


def group_e2e(r):
    print(f"[{r.device.type}] end-to-end evaluation and training on generated PNGs ...", flush=True)
    rows, bs = [], r.args.batch_size
    for op in r.operators:
        for v in r.variants(op, evaluation=True):
            rows += isolated(bench_eval, r.device, r.folder("eval256"), 256, 224, bs, r.workers, [v], op)
            rows += isolated(bench_eval, r.device, r.folder("eval48"), 48, 40, bs, r.workers, [v], op)
    for v in ["default", "channels_last", "cache"] + (["amp"] if r.cuda else []):
        rows += isolated(bench_train, r.device, r.folder("train256"), 256, 224, bs // 2, r.workers, [v],
                         os.path.join(r.tmp, "cache"))
    return rows + isolated(bench_train, r.device, r.folder("train48"), 48, 40, bs // 2, r.workers, ["default"])


def group_loader(r):
    return isolated(bench_loader, r.device, r.folder("train256"), 256, 224, r.args.batch_size // 2, r.workers)


def group_malloc(r):
    """Evaluation, training and the model with and without ``util.keep_freed_memory``, back to
    back; with the scripts' allocator these are the model / e2e groups' own rows when those run."""
    print("[cpu] with and without keep_freed_memory ...", flush=True)
    rows, bs = [], r.args.batch_size
    both_measured = "model" in r.selected and "e2e" in r.selected
    for allocator in ("system",) if both_measured else ("scripts", "system"):
        for size in (224, 40):
            rows += isolated(bench_model, r.device, size, bs, r.seconds, ["default"], allocator=allocator)
        for name, load, crop in (("eval256", 256, 224), ("eval48", 48, 40)):
            rows += isolated(bench_eval, r.device, r.folder(name), load, crop, bs, r.workers, ["default"],
                             allocator=allocator)
        for name, load, crop in (("train256", 256, 224), ("train48", 48, 40)):
            rows += isolated(bench_train, r.device, r.folder(name), load, crop, bs // 2, r.workers, ["default"],
                             allocator=allocator)
    return rows


def group_scripts(r):
    print("[cpu] test.py and predict.py, whole processes ...", flush=True)
    n = 16 if r.args.quick else 400
    write_png_folder(os.path.join(r.tmp, "scripts", "suite", "gen"), n, 256, seed=7)
    return bench_scripts(os.path.join(r.tmp, "scripts"), r.checkpoint(), n, r.args.batch_size)


def group_scan(r):
    print("[cpu] predict.py scans ...", flush=True)
    return bench_scan(os.path.join(r.tmp, "scan"), r.checkpoint(), (200, 2000) if r.args.quick else (10_000, 100_000))


def group_photo(r):
    print("[cpu] predict.py on one large photo ...", flush=True)
    sizes = ((1000, 750), (4000, 3000)) if r.args.quick else ((4000, 3000), (8000, 6000))
    return bench_photo(os.path.join(r.tmp, "photo"), r.checkpoint(), sizes)


def group_tiles(r):
    if not r.args.model_path:
        raise UserError("--only tiles needs --model_path: a trained checkpoint (e.g. python train.py's)")
    r.info["tiles"] = bench_tiles(r.args.model_path)
    print(format_table(r.info["tiles"], [("image", "image"), ("size", "size"), ("whole", "P(fake) whole"),
                                         ("tiled", "P(fake) tiled"), ("abs_diff", "|difference|")], floatfmt="{:.4f}"))
    return []


def group_intervals(r):
    print("[cpu] the cost of the 95 % intervals ...", flush=True)
    model_path = r.args.model_path or MINI_CHECKPOINT
    if not os.path.isfile(model_path):
        raise UserError(f"--only intervals needs the main job's checkpoint ({MINI_CHECKPOINT}: python train.py) or "
                        "--model_path")
    r.info["intervals"] = found = bench_intervals(model_path, 100 if r.args.quick else RESAMPLES,
                                                  1 if r.args.quick else 5)
    print(f"test.py on NPR-mini: {found['main_job_s']['0']:.1f} s without intervals, "
          f"{found['main_job_s'][str(found['resamples'])]:.1f} s with {found['resamples']} replicates "
          f"({found['main_job_added_pct']:+.1f} %, medians of alternating runs; the intervals of a table of its "
          f"size take {found['main_job_intervals_s']:.2f} s)\n"
          f"{found['full_images']:,} images in 28 generators: intervals {found['full_intervals_s']:.1f} s, a paired "
          f"comparison {found['full_compare_s']:.1f} s; scipy.stats.bootstrap on one generator of "
          f"{found['scipy_one_generator_images']:,} images: {found['scipy_one_generator_s']:.1f} s")
    return []


def group_scaling(r):
    rows, n = [], 16 if r.args.quick else 256
    for mult in (1, 4):
        folder = write_png_folder(os.path.join(r.tmp, f"scale{mult}"), n * mult, 64, seed=mult)
        rows += isolated(bench_scaling, r.device, folder, mult)
    return rows


@dataclass(frozen=True)
class Group:
    run: object           # Run -> rows
    cpu_only: bool = False


# The groups, in the order they run; --only reads the keys.
GROUPS = {"model": Group(group_model), "e2e": Group(group_e2e), "loader": Group(group_loader),
          "malloc": Group(group_malloc, cpu_only=True), "scripts": Group(group_scripts, cpu_only=True),
          "scan": Group(group_scan, cpu_only=True), "photo": Group(group_photo, cpu_only=True),
          "scaling": Group(group_scaling), "tiles": Group(group_tiles, cpu_only=True),
          "intervals": Group(group_intervals, cpu_only=True)}


# ----------------------------------------------------------------------------- main

def get_args_parser():
    p = OneLineErrorParser("Throughput and memory of the model, evaluation and training paths.")
    p.add_argument("--devices", default="auto", help="cpu, cuda, or auto (cpu, and cuda when present)")
    p.add_argument("--batch_size", type=int, default=64, help="evaluation batch (training uses half)")
    p.add_argument("--seconds", type=float, default=8.0, help="time per model-only measurement")
    p.add_argument("--eval_images", type=int, default=0,
                   help="images in the generated 256 px evaluation folder (0: 4 batches on CPU, 64 on CUDA)")
    p.add_argument("--train_images", type=int, default=0,
                   help="images in the generated 256 px training folder (0: 2 batches on CPU, 64 on CUDA)")
    p.add_argument("--num_threads", type=int, default=None,
                   help="data-loading workers for the end-to-end runs (default: what the scripts use on that "
                        "device)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    p.add_argument("--operators", default=",".join(OPERATORS),
                   help="artifact operators to measure (networks.OPERATORS); all but the default only in the "
                        "model-only and evaluation rows")
    p.add_argument("--model_path", default=None,
                   help="checkpoint for the tiles group (and the intervals group: default the main job's)")
    p.add_argument("--only", default="",
                   help=f"comma-separated groups to run (default: all): {', '.join(GROUPS)}")
    p.add_argument("--quick", action="store_true", help="short smoke run: tiny folders, 1 s per measurement")
    p.add_argument("--output", default="results/bench", help="folder for bench.json")
    return p


def comma_choices(value, choices, flag):
    """The comma-separated names of ``value``, each one of ``choices``; a one-line error otherwise."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise UserError(f"{flag} {value}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_output(args.output, "--output", folder=True)  # before the minutes of measuring, not after
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else \
        comma_choices(args.devices, ("cpu", "cuda"), "--devices")
    if "cuda" in devices and not torch.cuda.is_available():
        raise UserError("--devices cuda: no CUDA device is visible")
    operators = comma_choices(args.operators, list(OPERATORS), "--operators")
    if not operators:
        raise UserError(f"--operators '{args.operators}': choose from {', '.join(OPERATORS)} (comma-separated)")
    selected = comma_choices(args.only, list(GROUPS), "--only") or list(GROUPS)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "workers": {d: default_workers(args.num_threads, torch.device(d)) for d in devices},
            "argv": sys.argv[1:] if argv is None else list(argv)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="npr-bench-") as tmp:
        for name in devices:
            run = Run(torch.device(name), args, os.path.join(tmp, name), operators, selected, info)
            for key in selected:
                if not (GROUPS[key].cpu_only and run.cuda):
                    rows += GROUPS[key].run(run)
    summary, scripts, warnings = summarize(rows), summarize_scripts(rows), inconsistencies(rows)
    print(report(rows, summary, info, warnings))
    for k, v in scripts.items():
        print(f"{k}: {v:.2f}")
    path = os.path.join(args.output, "bench.json")
    write_json_atomically({"info": info, "results": rows, "summary": summary, "scripts": scripts,
                           "inconsistencies": warnings}, path)
    print(f"Wrote {path}")
    return 0


def find(rows, what, **match):
    """The first row of kind ``what`` whose fields equal ``match``; None if there is none."""
    return next((r for r in rows if r["what"] == what and all(r.get(k) == v for k, v in match.items())), None)


def inconsistencies(rows):
    """Lines naming figures that contradict each other: a whole path (end-to-end evaluation or
    training) faster than its model part alone cannot be, so one of the two was measured while
    the machine was busy; measure again on an idle machine before reading either."""
    out = []
    for whole, part, part_variant in ((EVAL_E2E, MODEL_FORWARD, "default"), (TRAIN_E2E, MODEL_TRAIN_STEP, "contiguous")):
        for r in rows:
            if r["what"] != whole or r["variant"] != "default":
                continue
            alone = find(rows, part, device=r["device"], size=r["size"], operator=r["operator"], variant=part_variant)
            if alone and r["images_per_s"] > alone["images_per_s"]:
                out.append(f"{whole} ({r['device']}, {r['size']} px, {r['operator']}: {r['images_per_s']:.1f} images/s) "
                           f"is faster than {part} alone ({alone['images_per_s']:.1f}): measured on a busy machine, "
                           "the two figures are not consistent; measure again")
    return out


# (key, row, variant) of the operator cost ratios in the summary
COST_PATHS = (("operator", OPERATOR_ONLY, "default"), ("model", MODEL_FORWARD, "default"),
              ("train_step", MODEL_TRAIN_STEP, "contiguous"), ("eval", EVAL_E2E, "default"))


def summarize(rows):
    """Speed-ups and pipeline efficiencies, per device and size."""
    out = []
    for device in dict.fromkeys(r["device"] for r in rows):
        for size in (224, 40):
            s = {"device": device, "size": size}
            fwd = {v: find(rows, MODEL_FORWARD, device=device, variant=v, size=size, operator=NPR)
                   for v in ("plain", "default")}
            ev = {v: find(rows, EVAL_E2E, device=device, variant=v, size=size, operator=NPR)
                  for v in ("plain", "default")}
            if fwd["plain"] and fwd["default"]:
                s["model_speedup_default_vs_plain"] = fwd["default"]["images_per_s"] / fwd["plain"]["images_per_s"]
            if ev["plain"] and ev["default"]:
                s["eval_speedup_default_vs_plain"] = ev["default"]["images_per_s"] / ev["plain"]["images_per_s"]
            if ev["default"] and fwd["default"]:
                s["eval_efficiency"] = ev["default"]["images_per_s"] / fwd["default"]["images_per_s"]
            tr = find(rows, TRAIN_E2E, device=device, variant="default", size=size)
            step = find(rows, MODEL_TRAIN_STEP, device=device, variant="contiguous", size=size, operator=NPR)
            if tr and step:
                s["train_efficiency"] = tr["images_per_s"] / step["images_per_s"]
            trc = find(rows, TRAIN_E2E, device=device, variant="cache", size=size)
            if trc and step:
                s["train_efficiency_cache"] = trc["images_per_s"] / step["images_per_s"]
            # How much slower each other operator makes each path (NPR's throughput / its own).
            for op in OPERATORS:
                for key, what, variant in COST_PATHS:
                    a, b = (find(rows, what, device=device, variant=variant, size=size, operator=o)
                            for o in (DEFAULT_OPERATOR, op))
                    if op != DEFAULT_OPERATOR and a and b:
                        s[f"{op}_cost_{key}"] = a["images_per_s"] / b["images_per_s"]
            # What util.keep_freed_memory buys (throughput with it / with glibc as is).
            for key, what, variant in (("malloc_gain_model", MODEL_FORWARD, "default"),
                                       ("malloc_gain_eval", EVAL_E2E, "default"),
                                       ("malloc_gain_train", TRAIN_E2E, "default")):
                a, b = (find(rows, what, device=device, variant=v, size=size, operator=NPR)
                        for v in (variant, variant + " (glibc as is)"))
                if a and b:
                    s[key] = a["images_per_s"] / b["images_per_s"]
            if len(s) > 2:
                out.append(s)
    return out


def summarize_scripts(rows):
    """test.py with / without ``keep_freed_memory``, predict.py against test.py (wall time ratios)
    and the scan's peak memory at the largest count against the smallest."""
    t_sys, t, p = (find(rows, w, variant=v) for w, v in ((TEST_SCRIPT, "glibc as is"), (TEST_SCRIPT, "default"),
                                                         (PREDICT_SCRIPT, "default")))
    scans = [r for r in rows if r["what"] == SCAN]
    photos = [r for r in rows if r["what"] == PHOTO]
    s = {}
    if t_sys and t:
        s["test.py speed-up from keep_freed_memory"] = t_sys["wall_s"] / t["wall_s"]
    if t and p:
        s["predict.py speed / test.py speed"] = t["wall_s"] / p["wall_s"]
    if len(scans) > 1:
        s[f"scan peak RSS, {scans[-1]['images']} / {scans[0]['images']} images"] = \
            scans[-1]["peak_mem_mb"] / scans[0]["peak_mem_mb"]
    for r in photos:
        s[f"predict.py peak RSS (MiB), one {r['variant']}"] = r["peak_mem_mb"]
    return s


def report(rows, summary, info, warnings=()):
    cols = [("device", "device"), ("what", "what"), ("operator", "operator"), ("variant", "variant"), ("size", "px"),
            ("batch", "batch"),
            ("images_per_s", "images/s"), ("peak_mem_mb", "peak MiB"), ("wall_s", "wall s"),
            ("cpu_user_s", "user s"), ("cpu_sys_s", "sys s"), ("sys_pct", "sys %")]
    text = [f"torch {info['torch']}, {info['cpu_count']} CPUs ({info['torch_threads']} torch threads), "
            f"CUDA: {info['cuda'] or 'none'}, loader workers: {info['workers']}",
            format_table(rows, cols)]
    scols = [("device", "device"), ("size", "px"), ("model_speedup_default_vs_plain", "model default/plain"),
             ("eval_speedup_default_vs_plain", "eval default/plain"), ("eval_efficiency", "eval efficiency"),
             ("train_efficiency", "train efficiency"), ("train_efficiency_cache", "train efficiency (cache)"),
             *[(f"{op}_cost_{key}", f"{op} cost: {key}" if i == 0 else key.replace("_", " "))
               for op in OPERATORS if op != DEFAULT_OPERATOR for i, (key, _, _) in enumerate(COST_PATHS)],
             ("malloc_gain_model", "malloc gain: model"), ("malloc_gain_eval", "eval"), ("malloc_gain_train", "train")]
    text.append(format_table(summary, scols, floatfmt="{:.2f}"))
    text += [f"Not consistent: {w}" for w in warnings]
    return "\n\n".join(text)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
