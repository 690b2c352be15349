"""Past one machine: torchrun node launches on 127.0.0.1 (two nodes of one process each, c10d
rendezvous, gloo) train, resume and scan as one node does; a run resumes on another number of
processes with every image of the epoch seen once; --sync_bn says where it applies; and the
commands of docs/scaling.md are the scripts' own."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import finish, free_port, ROOT, tiny_run, torchrun, weights
from PIL import Image
from test_readme import markdown_commands, parse_command

from data.discovery import make_samples
from data.images import ImageRule
from data.loaders import train_loader
from data.transforms import train_transform
from distributed import samples_done, sync_batchnorm
from networks import resnet50
from networks.checkpoint import TrainState
from options import parse_train_args

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def two_nodes(script, *args, cwds):
    port = free_port()
    return finish(*(torchrun(script, *args, nodes=2, port=port, cwd=c) for c in cwds))


def train_args(data, ckpts, *extra):
    return tiny_run(data, ckpts, "--name", "run", "--loss_freq", "1", *extra)


@pytest.mark.slow
def test_two_node_launches_train_and_resume_as_one_node_does(tiny_dataset, tmp_path):
    """Each node in a folder of its own with a relative --checkpoints_dir: only rank 0's node
    gets files. Its checkpoints are then put where the other node reads them (what a shared
    filesystem does) and both resume; the weights equal a one-node two-process run's, bit for
    bit (two processes: a sum of two gradients is the same in either order)."""
    data = str(tiny_dataset)
    finish(torchrun("train.py", *train_args(data, tmp_path / "one", "--niter", "1")))
    finish(torchrun("train.py", *train_args(data, tmp_path / "one", "--niter", "2",
                                            "--continue_train")))
    nodes = [tmp_path / "node_a", tmp_path / "node_b"]
    for n in nodes:
        n.mkdir()
    two_nodes("train.py", *train_args(data, "ck", "--niter", "1"), cwds=nodes)
    wrote = [n for n in nodes if (n / "ck").exists()]
    assert len(wrote) == 1, [os.listdir(n) for n in nodes]  # the rank-0 node alone writes
    other = next(n for n in nodes if n != wrote[0])
    assert os.listdir(other) == []  # the other node wrote nothing at all
    shutil.copytree(wrote[0] / "ck", other / "ck")  # what a shared filesystem does
    two_nodes("train.py", *train_args(data, "ck", "--niter", "2", "--continue_train"), cwds=nodes)
    # rank 0 may be either node this time: one copy went on to step 12, the other was left as it was
    ends = {n: torch.load(n / "ck" / "run" / "model_epoch_last.pth", weights_only=True) for n in nodes}
    assert sorted(e["total_steps"] for e in ends.values()) == [6, 12]
    resumed = next(n for n, e in ends.items() if e["total_steps"] == 12)
    a, b = weights(tmp_path / "one" / "run" / "model_epoch_last.pth"), ends[resumed]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (resumed / "ck" / "run" / "log.log").read_text()
    assert "processes = 2" in log and log.count("at step: 12 ") == 1


@pytest.mark.slow
def test_a_scan_split_over_two_node_launches_merges_into_one_process_output(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (24 + 2 * (i % 3), 24, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (imgs / "broken.png").write_bytes(b"not an image")
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pth"
    torch.save({"model": resnet50().state_dict()}, ckpt)
    common = [imgs, "--model_path", ckpt, "--gpu_ids", "-1", "--num_threads", "0", "--batch_size", "3"]
    one = subprocess.run([sys.executable, "predict.py", *map(str, common), "--output", str(tmp_path / "one")],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    outs = two_nodes("predict.py", *common, "--output", tmp_path / "shared" / "p", cwds=[tmp_path, tmp_path])
    assert sum("merged the 2 shards" in o for o in outs) == 1, outs
    a = [json.loads(line) for line in open(tmp_path / "one.jsonl")]
    b = [json.loads(line) for line in open(tmp_path / "shared" / "p.jsonl")]
    assert [r["path"] for r in a] == [r["path"] for r in b] and [r["verdict"] for r in a] == [r["verdict"] for r in b]
    assert all((x["prob_fake"] is None and y["prob_fake"] is None) or abs(x["prob_fake"] - y["prob_fake"]) < 1e-6
               for x, y in zip(a, b))
    meta = json.load(open(tmp_path / "shared" / "p.json"))
    assert meta["complete"] and meta["counts"] == json.load(open(tmp_path / "one.json"))["counts"]


def keys_of(tiny_dataset, world, rank, state=None, epoch=1, steps=None):
    """The (image, augmentation seed) keys process ``rank`` of ``world`` takes in ``epoch``: from
    where ``state`` left it, and ``steps`` steps of it (None: to the end)."""
    args = parse_train_args(train_args(tiny_dataset, "x"))
    samples = make_samples(os.path.join(args.dataroot, args.train_split), args.classes)
    _, sampler = train_loader(samples, train_transform(args), args.batch_size // world,
                              {"seed": args.seed, "shuffle": not args.serial_batches, "class_balance": args.class_bal},
                              rule=ImageRule(), rank=rank, world=world)
    sampler.set_epoch(epoch, start=samples_done(state or TrainState(), args.batch_size, world))
    keys = list(sampler)
    return keys if steps is None else keys[: steps * args.batch_size // world]


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (4, 2)])
def test_an_epoch_resumed_on_another_number_of_processes_sees_each_image_once(tiny_dataset, before, after):
    """train.py's own sampler and resume arithmetic (``samples_done``): 2 steps on ``before``
    processes, the rest on ``after``: every image once, each with the augmentation seed the
    uninterrupted one-process epoch gives it."""
    done = [k for r in range(before) for k in keys_of(tiny_dataset, before, r, steps=2)]
    state = TrainState(epoch=1, step_in_epoch=2, total_steps=8)
    rest = [k for r in range(after) for k in keys_of(tiny_dataset, after, r, state)]
    whole = keys_of(tiny_dataset, 1, 0)
    assert len(done) == 8 and sorted(done + rest) == sorted(whole)
    assert sorted(i for i, _ in done + rest) == list(range(24))


@pytest.mark.slow
def test_a_two_process_run_stopped_mid_epoch_resumes_on_one(tiny_dataset, tmp_path):
    """SIGTERM to one of two processes: both stop after the same step, rank 0 saves the latest
    checkpoint; one process resumes it to the end of the run, from the step it stopped at."""
    args = train_args(tiny_dataset, tmp_path, "--niter", "2")
    run = torchrun("train.py", *args)
    log = tmp_path / "run" / "log.log"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and "at step: 2 " in log.read_text()):
        time.sleep(0.05)
    children = open(f"/proc/{run.pid}/task/{run.pid}/children").read().split()
    os.kill(int(children[-1]), signal.SIGTERM)  # one worker
    out = run.communicate(timeout=240)[0]
    assert run.returncode != 0 and "Resume with" in log.read_text(), out[-3000:]
    latest = torch.load(tmp_path / "run" / "model_epoch_latest.pth", weights_only=True)
    assert latest["world_size"] == 2 and 0 < latest["total_steps"] < 12
    r = subprocess.run([sys.executable, "train.py", *map(str, args), "--continue_train"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "written by 2 process(es), this run has 1" in r.stdout
    last = torch.load(tmp_path / "run" / "model_epoch_last.pth", weights_only=True)
    assert last["total_steps"] == 12 and last["world_size"] == 1


def test_sync_bn_says_where_it_applies():
    model = resnet50()
    for world, device, says in ((1, "cpu", "one process already normalises"), (2, "cpu", "runs on CUDA only")):
        same, said = sync_batchnorm(model, world, torch.device(device))
        assert same is model and says in said and "--sync_bn" in said
    assert not parse_train_args(["--dataroot", "x"]).sync_bn  # off by default


def test_every_command_of_the_scaling_page_parses():
    commands = list(markdown_commands(open(os.path.join(ROOT, "docs", "scaling.md")).read()))
    for script, argv in commands:
        parse_command(script, argv)
    assert {s for s, _ in commands} >= {"train", "predict"} and len(commands) >= 5
