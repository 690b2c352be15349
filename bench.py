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
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from data.cache import cached_train_dataset
from data.discovery import make_samples
from data.loaders import BinaryImageDataset, EpochSampler, default_workers, make_train_loader
from data.transforms import EvalTransform, TrainTransform, normalize_batch
from engine import EvalConfig, StepConfig, StepContext, TrainState, evaluate_folder, train_one_epoch
from networks import DEFAULT_OPERATOR, OPERATORS, batch_probs, prepare_model, resnet50
from options import train_parser
from options.base_options import OneLineErrorParser
from report import format_table
from util import AMP_DTYPE, UserError, keep_freed_memory, run_cli, write_json_atomically

ROOT = os.path.dirname(os.path.abspath(__file__))
GROUPS = ("model", "e2e", "loader", "malloc", "scripts", "scan", "photo", "scaling", "tiles")


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

def make_model(device, seed=0, operator="npr"):
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
    return [{"device": device.type, "what": "operator only", "operator": operator, "variant": "default",
             "size": size, "batch": batch, "images_per_s": ips, "peak_mem_mb": mem, **cpu}]


def bench_model(device, size, batch, seconds, variants, operator="npr"):
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
        rows.append({"device": device.type, "what": "model forward", "operator": operator, "variant": variant,
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
        rows.append({"device": device.type, "what": "model train step", "operator": operator,
                     "variant": train_variant, "size": size, "batch": tb, "images_per_s": ips, "peak_mem_mb": mem,
                     **cpu})
    return rows


def bench_eval(device, folder, load_size, crop_size, batch, workers, variants, repeats=1, operator="npr"):
    rows = []
    n = len(make_samples(folder))
    for variant in variants:
        base = make_model(device, operator=operator)
        if variant == "plain":
            def run():
                return plain_evaluate_folder(base, folder, device, batch, load_size, crop_size, workers)
        else:
            model = prepare_model(base, device, compile_model=variant == "compile")

            cfg = EvalConfig(device, batch, workers, amp=variant == "amp")

            def run():
                return evaluate_folder(model, folder, EvalTransform(load_size, crop_size), cfg)["y_prob"]
        run()  # warm-up: page cache, lazy init
        reset_peak_memory(device)
        start, cpu = time.perf_counter(), cpu_times()
        for _ in range(repeats):
            run()
        sync(device)
        ips = n * repeats / (time.perf_counter() - start)
        rows.append({"device": device.type, "what": "end-to-end eval", "operator": operator, "variant": variant,
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
        ctx = StepContext(device, optimizer, torch.nn.BCEWithLogitsLoss(), step_cfg, scaler=scaler)

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
        rows.append({"device": device.type, "what": "end-to-end train", "operator": "npr", "variant": variant,
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
    return [{"device": device.type, "what": "train loader only", "operator": "-", "variant": "default",
             "size": crop_size, "batch": batch, "workers": workers, "images": n,
             "images_per_s": n / (time.perf_counter() - start), "peak_mem_mb": None, **sys_share(cpu, cpu_times())}]


def bench_scaling(device, folder, mult, size=64):
    """Peak memory of one evaluation of ``folder`` (workers 0: everything in this process)."""
    model = prepare_model(make_model(device), device)
    n = len(make_samples(folder))
    start = time.perf_counter()
    evaluate_folder(model, folder, EvalTransform(size, size - 8), EvalConfig(device, 64, 0))
    return [{"device": device.type, "what": "eval memory scaling", "operator": "npr", "variant": f"{mult}x",
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
    return {"device": "cpu", "what": what, "operator": "npr", "variant": variant, "size": size, "images": images,
            "images_per_s": images / wall, "wall_s": wall, "peak_mem_mb": rss, **sys_share((0, 0), (user, system))}


def bench_scripts(dataroot, checkpoint, n, batch):
    """test.py and predict.py as a user runs them, whole processes, on the same folder of 256 px
    PNGs with the pixels as they are: test.py with glibc as is and as the scripts set it up
    (``util.keep_freed_memory``), then predict.py."""
    common = ["--model_path", checkpoint, "--gpu_ids", "-1", "--batch_size", str(batch)]
    test = ["test.py", "--dataroot", dataroot, "--no_resize", "--no_crop", "--results_dir",
            os.path.join(dataroot, "results"), *common]
    leaf = os.path.join(dataroot, "suite", "gen")
    return [script_row("test.py", "glibc as is", n, 256, test, {"NPR_ALLOCATOR": "system"}),
            script_row("test.py", "default", n, 256, test),
            script_row("predict.py", "default", n, 256,
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
        rows.append(script_row("predict.py photo", f"{w}x{h} JPEG", 1, max(w, h),
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
        except Exception:  # a photograph this scikit-image does not ship (or cannot fetch offline)
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
        rows.append(script_row("predict.py scan", f"{n} images", n, size,
                               ["predict.py", folder, "--model_path", checkpoint, "--gpu_ids", "-1",
                                "--output", os.path.join(root, f"scan{n}", "p")]))
        shutil.rmtree(folder)
    return rows


# ----------------------------------------------------------------------------- isolation

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
    p.add_argument("--model_path", default=None, help="checkpoint for the tiles group")
    p.add_argument("--only", default="",
                   help=f"comma-separated groups to run (default: all): {', '.join(GROUPS)}")
    p.add_argument("--quick", action="store_true", help="short smoke run: tiny folders, 1 s per measurement")
    p.add_argument("--output", default="results/bench", help="folder for bench.json")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else \
        [d.strip() for d in args.devices.split(",")]
    if "cuda" in devices and not torch.cuda.is_available():
        raise UserError("--devices cuda: no CUDA device is visible")
    seconds = 1.0 if args.quick else args.seconds
    operators = [o.strip() for o in args.operators.split(",") if o.strip()]
    if not operators or any(o not in OPERATORS for o in operators):
        raise UserError(f"--operators '{args.operators}': choose from {', '.join(OPERATORS)} (comma-separated)")
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise UserError(f"--only {args.only}: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")

    def want(group):
        return not groups or group in groups

    rows = []
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "workers": {},
            "argv": sys.argv[1:] if argv is None else list(argv)}
    with tempfile.TemporaryDirectory(prefix="npr-bench-") as tmp:
        for name in devices:
            device = torch.device(name)
            cuda = device.type == "cuda"
            workers = default_workers(args.num_threads, device)
            info["workers"][name] = workers
            variants = ["plain", "default"] + (["amp"] if cuda else []) + (["compile"] if args.compile else [])
            # NPR's residual gets every variant; another operator those its cost ratios need.
            model_variants = {op: variants if op == DEFAULT_OPERATOR else [v for v in variants if v != "compile"]
                              for op in operators}
            eval_variants = {op: variants if op == DEFAULT_OPERATOR else
                             [v for v in variants if v not in ("plain", "compile")] for op in operators}
            n_eval = args.eval_images or (8 if args.quick else (64 if cuda else 4) * args.batch_size)
            n_train = args.train_images or (8 if args.quick else (64 if cuda else 2) * args.batch_size)
            if want("model"):
                print(f"[{name}] model only ...", flush=True)
                for size in (224, 40):
                    for op in operators:
                        rows += isolated(bench_operator, device, size, args.batch_size, seconds, op)
                        for v in model_variants[op]:
                            rows += isolated(bench_model, device, size, args.batch_size, seconds, [v], op)
            big, small = os.path.join(tmp, name, "eval256"), os.path.join(tmp, name, "eval48")
            train_root, train48 = os.path.join(tmp, name, "train256"), os.path.join(tmp, name, "train48")
            if want("e2e") or want("malloc") or want("loader"):
                write_png_folder(big, n_eval, 256)
                write_png_folder(small, n_eval * (1 if args.quick else 16), 48)
                write_png_folder(os.path.join(train_root, "train"), n_train, 256, seed=5)
                write_png_folder(os.path.join(train48, "train"), n_train * 8, 48, seed=6)
            if want("e2e"):
                print(f"[{name}] end-to-end evaluation and training on generated PNGs ...", flush=True)
                for op in operators:
                    for v in eval_variants[op]:
                        rows += isolated(bench_eval, device, big, 256, 224, args.batch_size, workers, [v], 1, op)
                        rows += isolated(bench_eval, device, small, 48, 40, args.batch_size, workers, [v], 1, op)
                for v in ["default", "channels_last", "cache"] + (["amp"] if cuda else []):
                    rows += isolated(bench_train, device, train_root, 256, 224, args.batch_size // 2, workers, [v],
                                     os.path.join(tmp, name, "cache"))
                rows += isolated(bench_train, device, train48, 48, 40, args.batch_size // 2, workers, ["default"])
            if want("loader"):
                rows += isolated(bench_loader, device, train_root, 256, 224, args.batch_size // 2, workers)
            if not cuda and want("malloc"):  # with and without util.keep_freed_memory, back to back
                print("[cpu] with and without keep_freed_memory ...", flush=True)
                # with the scripts' allocator these rows are the model / e2e groups' own: not measured twice
                for allocator in ("system",) if want("model") and want("e2e") else ("scripts", "system"):
                    for size in (224, 40):
                        rows += isolated(bench_model, device, size, args.batch_size, seconds, ["default"],
                                         allocator=allocator)
                    for folder, load, crop in ((big, 256, 224), (small, 48, 40)):
                        rows += isolated(bench_eval, device, folder, load, crop, args.batch_size, workers,
                                         ["default"], allocator=allocator)
                    for folder, load, crop in ((train_root, 256, 224), (train48, 48, 40)):
                        rows += isolated(bench_train, device, folder, load, crop, args.batch_size // 2, workers,
                                         ["default"], allocator=allocator)
            checkpoint = os.path.join(tmp, "model.pth")
            torch.save({"model": make_model(torch.device("cpu")).state_dict()}, checkpoint)
            if not cuda and want("scripts"):
                print("[cpu] test.py and predict.py, whole processes ...", flush=True)
                n_scripts = 16 if args.quick else 400
                write_png_folder(os.path.join(tmp, "scripts", "suite", "gen"), n_scripts, 256, seed=7)
                rows += bench_scripts(os.path.join(tmp, "scripts"), checkpoint, n_scripts, args.batch_size)
            if not cuda and want("scan"):
                print("[cpu] predict.py scans ...", flush=True)
                rows += bench_scan(os.path.join(tmp, "scan"), checkpoint,
                                   (200, 2000) if args.quick else (10_000, 100_000))
            if not cuda and want("photo"):
                print("[cpu] predict.py on one large photo ...", flush=True)
                rows += bench_photo(os.path.join(tmp, "photo"), checkpoint,
                                    ((1000, 750), (4000, 3000)) if args.quick else ((4000, 3000), (8000, 6000)))
            if not cuda and want("tiles"):
                if not args.model_path:
                    raise UserError("--only tiles needs --model_path: a trained checkpoint (e.g. python train.py's)")
                tile_rows = bench_tiles(args.model_path)
                print(format_table(tile_rows, [("image", "image"), ("size", "size"), ("whole", "P(fake) whole"),
                                               ("tiled", "P(fake) tiled"), ("abs_diff", "|difference|")],
                                   floatfmt="{:.4f}"))
                info["tiles"] = tile_rows
            if want("scaling"):
                n_scale = 16 if args.quick else 256
                for mult in (1, 4):
                    folder = write_png_folder(os.path.join(tmp, name, f"scale{mult}"), n_scale * mult, 64, seed=mult)
                    rows += isolated(bench_scaling, device, folder, mult)
    summary = summarize(rows)
    print(report(rows, summary, info))
    scripts = summarize_scripts(rows)
    for k, v in scripts.items():
        print(f"{k}: {v:.2f}")
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "bench.json")
    write_json_atomically({"info": info, "results": rows, "summary": summary, "scripts": scripts}, path)
    print(f"Wrote {path}")
    return 0


def find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


# (key, row, variant) of the operator cost ratios in the summary
COST_PATHS = (("operator", "operator only", "default"), ("model", "model forward", "default"),
              ("train_step", "model train step", "contiguous"), ("eval", "end-to-end eval", "default"))


def summarize(rows):
    """Speed-ups and pipeline efficiencies, per device and size."""
    out = []
    for device in dict.fromkeys(r["device"] for r in rows):
        for size in (224, 40):
            s = {"device": device, "size": size}
            fwd = {v: find(rows, device=device, what="model forward", variant=v, size=size, operator="npr")
                   for v in ("plain", "default")}
            ev = {v: find(rows, device=device, what="end-to-end eval", variant=v, size=size, operator="npr")
                  for v in ("plain", "default")}
            if fwd["plain"] and fwd["default"]:
                s["model_speedup_default_vs_plain"] = fwd["default"]["images_per_s"] / fwd["plain"]["images_per_s"]
            if ev["plain"] and ev["default"]:
                s["eval_speedup_default_vs_plain"] = ev["default"]["images_per_s"] / ev["plain"]["images_per_s"]
            if ev["default"] and fwd["default"]:
                s["eval_efficiency"] = ev["default"]["images_per_s"] / fwd["default"]["images_per_s"]
            tr = find(rows, device=device, what="end-to-end train", variant="default", size=size)
            step = find(rows, device=device, what="model train step", variant="contiguous", size=size, operator="npr")
            if tr and step:
                s["train_efficiency"] = tr["images_per_s"] / step["images_per_s"]
            trc = find(rows, device=device, what="end-to-end train", variant="cache", size=size)
            if trc and step:
                s["train_efficiency_cache"] = trc["images_per_s"] / step["images_per_s"]
            # How much slower each other operator makes each path (NPR's throughput / its own).
            for op in OPERATORS:
                for key, what, variant in COST_PATHS:
                    a, b = (find(rows, device=device, what=what, variant=variant, size=size, operator=o)
                            for o in (DEFAULT_OPERATOR, op))
                    if op != DEFAULT_OPERATOR and a and b:
                        s[f"{op}_cost_{key}"] = a["images_per_s"] / b["images_per_s"]
            # What util.keep_freed_memory buys (throughput with it / with glibc as is).
            for key, what, variant in (("malloc_gain_model", "model forward", "default"),
                                       ("malloc_gain_eval", "end-to-end eval", "default"),
                                       ("malloc_gain_train", "end-to-end train", "default")):
                a, b = (find(rows, device=device, what=what, variant=v, size=size, operator="npr")
                        for v in (variant, variant + " (glibc as is)"))
                if a and b:
                    s[key] = a["images_per_s"] / b["images_per_s"]
            if len(s) > 2:
                out.append(s)
    return out


def summarize_scripts(rows):
    """test.py with / without ``keep_freed_memory``, predict.py against test.py (wall time ratios)
    and the scan's peak memory at the largest count against the smallest."""
    t_sys, t, p = (find(rows, what=w, variant=v) for w, v in (("test.py", "glibc as is"), ("test.py", "default"),
                                                              ("predict.py", "default")))
    scans = [r for r in rows if r["what"] == "predict.py scan"]
    photos = [r for r in rows if r["what"] == "predict.py photo"]
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


def report(rows, summary, info):
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
    return "\n\n".join(text)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
