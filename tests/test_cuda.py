"""Every CUDA path, checked against the CPU. Skipped (and counted as skipped) without a GPU;
``python gpu_check.py`` runs them first on a machine that has one.

Tolerances, in probability (images of 24-48 px, float32 unless said):
* evaluation, CUDA vs CPU: 1e-4 (TF32 off; cuDNN's algorithms sum in another order);
* ``--amp`` (float16 autocast) vs the CPU's float32: 5e-3;
* training: after 3 Adam steps from the same weights and batches, the CUDA run's change of the
  weights differs from the CPU run's by under 5 % of its size (relative L2);
* ``--exact``: two CUDA runs give bit-identical weights.
"""
import json
import os

import numpy as np
import pytest
import torch
from conftest import need_extra, run_script, tiny_run, write_leaf
from PIL import Image

from data.loaders import make_eval_loader
from data.transforms import EvalTransform, normalize_batch
from devices import set_numerics
from networks import EvalConfig, load_detector, predict_proba, prepare_model, resnet50, score_images

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """NPR-mini-sized (48 px) and odd-sized (33x31, 37x53) PNGs, and a checkpoint per operator."""
    tmp = tmp_path_factory.mktemp("cuda")
    write_leaf(str(tmp / "mini"), 4, 4, size=(48, 48), seed=1)
    write_leaf(str(tmp / "odd"), 3, 3, size=(33, 31), seed=2)
    write_leaf(str(tmp / "odd2"), 2, 2, size=(37, 53), seed=3)
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs if f.endswith(".png"))
    for op in ("npr", "dwt"):
        torch.manual_seed(0)
        torch.save({"model": resnet50(operator=op).state_dict(), "operator": op}, tmp / f"{op}.pth")
    return tmp, paths


def probs(model, paths, amp=False):
    return np.array([s.prob for s in score_images(model, paths, None, EvalConfig(device=CUDA, batch_size=8, amp=amp,
                                                                                  channels_last=None))])


@pytest.mark.parametrize("operator", ["npr", "dwt"])
def test_evaluation_on_cuda_equals_the_cpu(images, operator):
    tmp, paths = images
    set_numerics()  # TF32 off, as every script sets it
    ckpt = str(tmp / f"{operator}.pth")
    cpu = probs(prepare_model(load_detector(ckpt, device=CPU), CPU), paths)
    on_gpu = load_detector(ckpt, device=CUDA)
    default = probs(prepare_model(on_gpu, CUDA), paths)
    contiguous = probs(prepare_model(on_gpu, CUDA, channels_last=False), paths)
    unfolded = probs(prepare_model(on_gpu, CUDA, fold_bn=False), paths)
    amp = probs(prepare_model(on_gpu, CUDA), paths, amp=True)
    for name, got, tol in (("default", default, 1e-4), ("contiguous", contiguous, 1e-4),
                           ("BatchNorm not folded", unfolded, 1e-4), ("amp", amp, 5e-3)):
        assert np.abs(got - cpu).max() < tol, (operator, name, np.abs(got - cpu).max())


def test_loader_pins_memory_for_cuda_and_predict_proba_runs_there(images):
    tmp, paths = images
    loader = make_eval_loader([(p, 0) for p in paths], EvalTransform(48, 32), 4, 2, CUDA)
    assert all(b.images.is_pinned() for b in loader)
    model = load_detector(str(tmp / "npr.pth"), device=CUDA)
    cpu = predict_proba(load_detector(str(tmp / "npr.pth"), device=CPU), paths)
    assert torch.allclose(predict_proba(model, paths), cpu, atol=1e-4, rtol=0)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                     for p in paths if "mini" in p])
    assert torch.allclose(predict_proba(model, x), predict_proba(load_detector(str(tmp / "npr.pth"), device=CPU), x),
                          atol=1e-4, rtol=0)


def test_predict_py_and_the_demo_on_gpu(images, tmp_path):
    tmp, paths = images
    ckpt = str(tmp / "npr.pth")
    outs = {}
    for ids in ("0", "-1"):
        r = run_script("predict.py", str(tmp / "mini"), str(tmp / "odd"), "--model_path", ckpt, "--gpu_ids", ids,
                "--output", str(tmp_path / f"p{ids}"))
        assert r.returncode == 0, r.stderr
        outs[ids] = [row["prob_fake"] for row in json.load(open(tmp_path / f"p{ids}.json"))["predictions"]]
    assert np.abs(np.array(outs["0"]) - np.array(outs["-1"])).max() < 1e-4
    need_extra("gradio")
    import demo
    from engine import score_files
    from figures import ArtifactFigures
    model, _ = demo.load_model(ckpt, "0")
    assert next(model.parameters()).is_cuda
    rows = list(score_files(model, paths, EvalTransform(256, 256, resize=False, crop=False), 0.5,
                            figure=ArtifactFigures(str(tmp_path / "fig"), model.operator)))
    cpu = probs(prepare_model(load_detector(ckpt, device=CPU), CPU), paths)
    assert np.abs(np.array([r["prob_fake"] for r in rows]) - cpu).max() < 1e-4
    assert all(os.path.isfile(r["figure"]) for r in rows)


def train_args(data, ckpts, name, *extra):
    return ["train.py", *tiny_run(data, ckpts, "--name", name, "--niter", "1", "--num_threads", "2", *extra)]


def state(ckpts, name, which="model_epoch_last.pth"):
    return torch.load(os.path.join(ckpts, name, which), weights_only=True, map_location="cpu")


def test_exact_cuda_training_is_bit_identical(tiny_dataset, tmp_path):
    for name in ("a", "b"):
        r = run_script(*train_args(tiny_dataset, tmp_path, name, "--gpu_ids", "0", "--exact"))
        assert r.returncode == 0, r.stderr
    a, b = state(tmp_path, "a")["model"], state(tmp_path, "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_cuda_training_steps_follow_the_cpu():
    """3 Adam steps from the same weights on the same batches: CUDA (cuDNN, TF32 off) vs CPU."""
    set_numerics()
    torch.manual_seed(0)
    start = resnet50()
    x = normalize_batch(torch.randint(0, 256, (3, 8, 3, 32, 32), dtype=torch.uint8))
    y = torch.tensor([0.0, 1.0] * 4)
    ends = {}
    for device in (CPU, CUDA):
        model = resnet50().to(device)
        model.load_state_dict(start.state_dict())
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999))
        for step in range(3):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[step].to(device)).squeeze(1),
                                                                        y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        ends[device.type] = torch.cat([p.detach().cpu().flatten() for p in model.parameters()])
    w0 = torch.cat([p.detach().flatten() for p in start.parameters()])
    change = (ends["cpu"] - w0).norm()
    assert (ends["cuda"] - ends["cpu"]).norm() < 0.05 * change


def test_amp_training_is_finite_and_resumes(tiny_dataset, tmp_path):
    r = run_script(*train_args(tiny_dataset, tmp_path, "amp", "--gpu_ids", "0", "--amp"))
    assert r.returncode == 0, r.stderr
    first = state(tmp_path, "amp")
    assert all(torch.isfinite(v).all() for v in first["model"].values() if v.is_floating_point())
    r = run_script(*train_args(tiny_dataset, tmp_path, "amp", "--gpu_ids", "0", "--amp", "--continue_train"), "--niter", "2")
    assert r.returncode == 0, r.stderr
    second = state(tmp_path, "amp")
    assert second["epoch"] > first["epoch"]
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])


def test_torchrun_with_nccl_trains_an_epoch_and_saves(tiny_dataset, tmp_path):
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            *train_args(tiny_dataset, tmp_path, "ddp", "--gpu_ids", "0"))
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "ddp" / "model_epoch_last.pth")


def test_decoded_image_cache_feeds_cuda_training_and_test_py_runs_there(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    for name, extra in (("plain", []), ("cached", ["--cache_dir", str(cache)])):
        r = run_script(*train_args(tiny_dataset, tmp_path, name, "--gpu_ids", "0", "--exact", *extra))
        assert r.returncode == 0, r.stderr
    a, b = state(tmp_path, "plain")["model"], state(tmp_path, "cached")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the cache holds the same decoded pixels
    res = {}
    for ids in ("0", "-1"):
        r = run_script("test.py", "--dataroot", str(tiny_dataset), "--model_path",
                str(tmp_path / "plain" / "model_epoch_last.pth"), "--loadSize", "32", "--cropSize", "24",
                "--gpu_ids", ids, "--results_dir", str(tmp_path / f"res{ids}"), "--num_threads", "2")
        assert r.returncode == 0, r.stderr
        res[ids] = {(row["suite"], row["generator"]): row["ap"]
                    for row in json.load(open(tmp_path / f"res{ids}" / "results.json"))["results"]}
    assert res["0"].keys() == res["-1"].keys() and all(abs(res["0"][k] - res["-1"][k]) < 1e-3 for k in res["0"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs: NCCL runs one process per GPU")
def test_sync_bn_on_two_gpus_follows_one_gpu(tiny_dataset, tmp_path):
    """--sync_bn: 2 processes with a global batch of 8 (4 per GPU) against one process with batch 8,
    one epoch from the same initial weights: the weight changes agree within the tolerance of
    CUDA against the CPU (5 % of the change)."""
    common = ["--batch_size", "8", "--gpu_ids", "0"]
    r = run_script(*train_args(tiny_dataset, tmp_path, "one", *common))
    assert r.returncode == 0, r.stderr
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   *train_args(tiny_dataset, tmp_path, "two", *common, "--sync_bn"))
    assert r.returncode == 0, r.stderr
    assert "BatchNorm statistics over the global batch of all 2 processes" in open(tmp_path / "two" / "log.log").read()
    import train
    args = train.parse_train_args(["--dataroot", str(tiny_dataset)])
    train.seed_everything(args.seed)
    start = torch.cat([p.flatten() for p in resnet50().parameters()])

    def flat(name):
        model = state(tmp_path, name)["model"]
        return torch.cat([model[k].flatten() for k, _ in resnet50().named_parameters()])
    one, two = flat("one"), flat("two")
    assert (two - one).norm() < 0.05 * (one - start).norm()
