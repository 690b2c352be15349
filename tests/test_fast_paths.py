"""The fast paths change speed, not results: fused / channels-last evaluation, the decoded-image
cache, and DistributedDataParallel training (gloo, 2 processes on the CPU)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from conftest import ROOT, write_leaf
from PIL import Image

import train
from data.cache import UNREADABLE, TrainCache, cached_train_dataset
from data.discovery import make_samples
from data.loaders import BinaryImageDataset
from data.transforms import EvalTransform, train_transform
from engine import EvalConfig, evaluate_folder
from networks import prepare_model, resnet50
from networks.fuse import fuse_for_inference
from options import parse_train_args
from util import UserError


def randomized_model(seed=0):
    """A model whose BatchNorms are far from identity, so that folding them is really tested."""
    torch.manual_seed(seed)
    model = resnet50(num_classes=1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


@torch.no_grad()
def calibrate(model, x):
    """Rescale the head so that the logits on ``x`` have mean 0 and std 2: probabilities spread
    over (0, 1) instead of all saturating, where any difference would be invisible."""
    logits = model(x).flatten()
    scale = 2.0 / max(logits.std().item(), 1e-6) if len(logits) > 1 else 1.0
    model.fc1.weight.mul_(scale)
    model.fc1.bias.mul_(scale).sub_(logits.mean() * scale)
    return model


@pytest.mark.parametrize("shape", [(4, 3, 40, 40), (2, 3, 33, 47), (1, 3, 64, 48)])
def test_fused_channels_last_model_matches_plain_forward(shape):
    x = torch.randn(*shape) * 2
    model = calibrate(randomized_model(), x)
    with torch.no_grad():
        plain = torch.sigmoid(model(x))
    fast = prepare_model(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.inference_mode():
        out = torch.sigmoid(fast(x.contiguous(memory_format=torch.channels_last)))
    assert 0.01 < plain.min() and plain.max() < 0.99
    assert (out - plain).abs().max().item() <= 1e-4


def test_fuse_refuses_other_models():
    with pytest.raises(TypeError, match="NPRResNet"):
        fuse_for_inference(torch.nn.Linear(2, 2))


def test_default_evaluation_equals_plain_reference_pipeline(tmp_path):
    """evaluate_folder (uint8 until the model, folded BN, channels-last, inference_mode) against
    torchvision's Resize / CenterCrop / ToTensor / Normalize and a plain fp32 contiguous forward."""
    write_leaf(str(tmp_path / "d"), 5, 5, size=(37, 45), seed=3)
    samples = make_samples(str(tmp_path / "d"))
    reference = T.Compose([T.Resize((32, 32)), T.CenterCrop(28), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([reference(Image.open(p).convert("RGB")) for p, _ in samples])
    model = calibrate(randomized_model(1), x)
    fast = evaluate_folder(prepare_model(model, torch.device("cpu")), str(tmp_path / "d"), EvalTransform(32, 28),
                           EvalConfig(device=torch.device("cpu"), batch_size=4))
    plain = resnet50(num_classes=1)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        expected = torch.sigmoid(plain(x)).flatten().numpy()
    assert fast["y_true"].tolist() == [label for _, label in samples]
    assert expected.std() > 0.1
    assert np.abs(fast["y_prob"] - expected).max() <= 1e-4


# ----------------------------------------------------------------------------- the cache

def train_opt(*extra):
    return parse_train_args(["--loadSize", "32", "--cropSize", "24", *extra])


@pytest.mark.parametrize("extra", [[], ["--blur_prob", "0.5", "--blur_sig", "0,2", "--jpg_prob", "0.5",
                                        "--jpg_method", "pil", "--jpg_qual", "30,100"]])
def test_cached_samples_equal_decoded_samples(tiny_dataset, tmp_path, extra):
    samples = make_samples(str(tiny_dataset / "train"))
    transform = train_transform(train_opt(*extra))
    cached = cached_train_dataset(str(tmp_path / "cache"), samples, transform)
    decoded = BinaryImageDataset(samples, transform)
    for index in range(len(samples)):
        for seed in (0, 7, 12345):
            a, la, *_ = cached[(index, seed)]
            b, lb, *_ = decoded[(index, seed)]
            assert la == lb and a.dtype == torch.uint8 and a.shape == (3, 24, 24)
            assert torch.equal(a, b), (index, seed)


def test_cache_build_resumes_and_skips_unreadable(tiny_dataset, tmp_path, monkeypatch):
    import data.cache as cache_mod
    bad = tiny_dataset / "train" / "car" / "0_real" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    samples = make_samples(str(tiny_dataset / "train"))
    transform = train_transform(train_opt())
    monkeypatch.setattr(cache_mod, "FLUSH_EVERY", 5)
    decoded = []
    real_getitem = cache_mod._DecodeResize.__getitem__

    def interrupt_after_12(self, i):
        if len(decoded) == 12:
            raise KeyboardInterrupt
        decoded.append(self.indices[i])
        return real_getitem(self, i)

    monkeypatch.setattr(cache_mod._DecodeResize, "__getitem__", interrupt_after_12)
    cache = TrainCache(str(tmp_path / "cache"), samples, 32)
    with pytest.raises(KeyboardInterrupt):
        cache.build(progress=False)
    state = cache.state()
    assert (state != 0).sum() == 10 and not cache.is_complete()  # two durable marks of 5 images each

    monkeypatch.setattr(cache_mod._DecodeResize, "__getitem__", real_getitem)
    cache.build(progress=False)
    assert cache.is_complete()
    state = cache.state()
    bad_index = [p for p, _ in samples].index(str(bad))
    assert state[bad_index] == UNREADABLE and (np.delete(state, bad_index) == 1).all()
    ds = cache.dataset(transform)
    assert ds[(bad_index, 0)][0] is None
    img, *_ = ds[(0, 3)]
    assert torch.equal(img, BinaryImageDataset(samples, transform)[(0, 3)][0])


def test_the_cache_takes_its_disk_blocks_before_writing_and_a_full_disk_is_one_line(tiny_dataset, tmp_path,
                                                                                     monkeypatch):
    """Pixels are written through a memory map: a sparse file on a disk that others fill later
    killed the build with SIGBUS, without a word."""
    import errno

    import data.cache as cache_mod
    samples = make_samples(str(tiny_dataset / "train"))
    cache = TrainCache(str(tmp_path / "cache"), samples, 32).build(progress=False)
    st = os.stat(cache.images_path)
    assert st.st_size == cache.nbytes and st.st_blocks * 512 >= cache.nbytes  # allocated, not sparse

    def disk_full(f, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cache_mod, "reserve_file", disk_full)  # filled between the free-space check and the file
    other = TrainCache(str(tmp_path / "other"), samples, 24)
    with pytest.raises(UserError, match="No space left on device; choose another folder or drop --cache_dir"):
        other.build(progress=False)
    assert not os.path.exists(other.images_path)


@pytest.mark.parametrize("runs", [2, 4])
def test_runs_that_build_one_cache_at_once_end_with_the_one_cache(tiny_dataset, tmp_path, monkeypatch, runs):
    """A sweep started at once with one --cache_dir: every run ends with the cache a lone build
    writes (none crashes on another's files, no pixel is zeroed by a late start)."""
    import multiprocessing

    import data.cache as cache_mod
    monkeypatch.setattr(cache_mod, "FLUSH_EVERY", 1)  # a progress mark per image: the most chances to collide
    samples = make_samples(str(tiny_dataset / "train"))
    alone = TrainCache(str(tmp_path / "alone"), samples, 32).build(progress=False)
    shared = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()

    def build():
        go.wait()
        TrainCache(shared, samples, 32).build(progress=False)
    procs = [ctx.Process(target=build) for _ in range(runs)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * runs
    cache = TrainCache(shared, samples, 32)
    assert cache.is_complete() and (cache.state() == alone.state()).all()
    with open(cache.images_path, "rb") as a, open(alone.images_path, "rb") as b:
        assert a.read() == b.read()


def test_cache_refuses_several_interpolations(tiny_dataset, tmp_path):
    samples = make_samples(str(tiny_dataset / "train"))
    with pytest.raises(UserError, match="single --rz_interp"):
        transform = train_transform(train_opt("--rz_interp", "bilinear,bicubic"))
        cached_train_dataset(str(tmp_path / "c"), samples, transform)


@pytest.mark.slow
def test_training_from_the_cache_gives_the_same_weights(tiny_dataset, tmp_path):
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--batch_size", "4",
              "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0", "--niter", "1",
              "--deterministic", "--blur_prob", "0.3", "--jpg_prob", "0.3", "--jpg_method", "pil"]
    assert train.main(common + ["--name", "decoded"]) == 0
    assert train.main(common + ["--name", "cached", "--cache_dir", str(tmp_path / "cache")]) == 0
    a = torch.load(tmp_path / "decoded" / "model_epoch_last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "cached" / "model_epoch_last.pth", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- DDP

def torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "train.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_ddp_two_processes_gloo_trains_and_resumes(tiny_dataset, tmp_path):
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--name", "ddp",
              "--batch_size", "4", "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0",
              "--loss_freq", "1"]
    r = torchrun(*common, "--niter", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / "ddp"
    log_text = (exp / "log.log").read_text()
    # 24 images, global batch 4 -> 6 steps per epoch, each logged once (rank 0 only)
    assert [f"at step: {s} " in log_text for s in range(1, 7)] == [True] * 6
    assert log_text.count("at step: 1 ") == 1 and "at step: 7 " not in log_text
    assert "processes = 2" in log_text
    assert "12 images" in log_text  # validation gathered from both ranks (12 val images)
    state = torch.load(exp / "model_epoch_latest.pth", weights_only=True)
    assert state["epoch"] == 1 and state["total_steps"] == 6
    assert not any(k.startswith("module.") for k in state["model"])

    r = torchrun(*common, "--niter", "2", "--continue_train")
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(exp / "model_epoch_last.pth", weights_only=True)
    assert state["epoch"] == 2 and state["total_steps"] == 12
    assert "Resuming from" in (exp / "log.log").read_text()


@pytest.mark.slow
def test_ddp_batch_must_split_evenly(tiny_dataset, tmp_path):
    r = torchrun("--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--batch_size", "3",
                 "--gpu_ids", "-1", "--num_threads", "0", "--niter", "1")
    assert r.returncode != 0 and "must divide by the 2 processes" in r.stderr + r.stdout


# ----------------------------------------------------------------------------- bench.py

@pytest.mark.slow
def test_bench_pieces_run_and_summarize(tmp_path):
    """bench.py's measurements on tiny inputs: each row counts the images it ran, and the summary's
    ratios are the ratios of those rows."""
    import bench
    cpu = torch.device("cpu")
    folder = bench.write_png_folder(str(tmp_path / "e"), 6, 48)
    assert len(make_samples(folder)) == 6 and Image.open(make_samples(folder)[0][0]).size == (48, 48)
    rows = bench.bench_model(cpu, 40, 4, 0.05, ["plain", "default"])
    rows += bench.bench_eval(cpu, folder, 48, 40, 4, 0, ["plain", "default"])
    for op in ("npr", "dwt"):  # SAFE's operator beside NPR's: the operator alone, the model, evaluation
        rows += bench.bench_operator(cpu, 40, 4, 0.05, op)
    rows += bench.bench_model(cpu, 40, 4, 0.05, ["plain", "default"], operator="dwt")
    rows += bench.bench_eval(cpu, folder, 48, 40, 4, 0, ["default"], operator="dwt")
    bench.write_png_folder(str(tmp_path / "t" / "train"), 8, 48)
    rows += bench.bench_train(cpu, str(tmp_path / "t"), 48, 40, 4, 0, ["default", "cache"], str(tmp_path / "c"))
    rows += bench.bench_scaling(cpu, folder, 1, size=48)
    assert all(r["images"] == 6 for r in rows if r["what"] in (bench.EVAL_E2E, bench.EVAL_SCALING))
    assert all(r["images"] == 8 for r in rows if r["what"] == bench.TRAIN_E2E)
    s = {r["size"]: r for r in bench.summarize(rows)}[40]

    def ips(what, **match):
        return bench.find(rows, what, size=40, **match)["images_per_s"]
    assert s["eval_efficiency"] == ips(bench.EVAL_E2E, variant="default", operator="npr") / ips(
        bench.MODEL_FORWARD, variant="default", operator="npr")
    assert s["dwt_cost_model"] == ips(bench.MODEL_FORWARD, variant="default", operator="npr") / ips(
        bench.MODEL_FORWARD, variant="default", operator="dwt")
    assert s["train_efficiency_cache"] == ips(bench.TRAIN_E2E, variant="cache") / ips(
        bench.MODEL_TRAIN_STEP, variant="contiguous", operator="npr")


def test_bench_names_figures_that_contradict_each_other():
    """End to end faster than the model alone cannot be: the report says the machine was busy."""
    import bench
    row = {"device": "cpu", "size": 224, "operator": "npr"}
    rows = [dict(row, what=bench.MODEL_FORWARD, variant="default", images_per_s=14.4),
            dict(row, what=bench.EVAL_E2E, variant="default", images_per_s=50.9),
            dict(row, what=bench.MODEL_TRAIN_STEP, variant="contiguous", images_per_s=30.0),
            dict(row, what=bench.TRAIN_E2E, variant="default", images_per_s=20.0)]
    (line,) = bench.inconsistencies(rows)
    assert "end-to-end eval" in line and "50.9" in line and "14.4" in line and "busy machine" in line
    assert "Not consistent" in bench.report(rows, [], {"torch": "x", "cpu_count": 2, "torch_threads": 2,
                                                        "cuda": None, "workers": {}}, [line])
    with pytest.raises(UserError, match="--only nope: unknown nope; choose from model, e2e"):
        bench.main(["--only", "nope"])


def test_size_buckets_give_the_reference_batch_size_1_predictions(tmp_path):
    """Mixed-size suites run in size buckets; the reference needs batch size 1 there. In eval
    mode an image's score does not depend on its batch-mates, up to float rounding (kernels
    differ with the batch size; 7e-5 seen here)."""
    write_leaf(str(tmp_path / "d" / "a"), 3, 3, size=(32, 32), seed=4)
    write_leaf(str(tmp_path / "d" / "b"), 3, 3, size=(40, 26), seed=5)
    model = randomized_model(2)
    x = torch.randn(4, 3, 32, 32)
    model = calibrate(model, x)
    runs = [evaluate_folder(prepare_model(model, torch.device("cpu"), channels_last=False, fold_bn=False),
                            str(tmp_path / "d"), EvalTransform(resize=False, crop=False),
                            EvalConfig(device=torch.device("cpu"), batch_size=b, channels_last=False)) for b in (1, 8)]
    assert runs[0]["y_true"].tolist() == runs[1]["y_true"].tolist()
    assert np.abs(runs[0]["y_prob"] - runs[1]["y_prob"]).max() <= 1e-4
