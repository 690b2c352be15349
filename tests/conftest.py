"""What several test modules share: the repository's path, the optional extra's skips, small
datasets, processes (a script, torchrun, a fork race), a quiet local HTTP server, small disks, and
the tiny training run's options."""
import contextlib
import importlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hostile import write_hostile_corpus  # noqa: E402  (after the path)
from networks import resnet50  # noqa: E402

# Property-based tests: a few examples by default (the suite stays fast), many for a release
# check: HYPOTHESIS_PROFILE=thorough python -m pytest -q tests
_common = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("default", max_examples=12, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# The optional extra (requirements-demo.txt, and Chromium from the system's packages): tests that need
# it skip, naming what is missing, on the README's install; they fail instead where
# NPR_REQUIRE_DEMO=1 says it must be there (the second stage of .ci/run).
REQUIRE_EXTRAS = os.environ.get("NPR_REQUIRE_DEMO") == "1"
EXTRA_PACKAGES = ("gradio", "gradio_client", "python_multipart", "starlette", "selenium")  # their import names
EXTRA_INSTALL = "pip install -r requirements-demo.txt"


def need_extra(module, install=EXTRA_INSTALL):
    """``module`` imported; when it (or a package it imports) is missing, the calling test or
    test module is skipped with the reason, or fails under NPR_REQUIRE_DEMO=1."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing_extra(f"the optional extra is not installed ({e}; {module} needs it): {install}")


def need_program(*names, install="apt-get install chromium chromium-driver"):
    """The paths of the programs ``names`` (the browser and its driver), as ``need_extra`` does for
    packages."""
    found = [shutil.which(n) for n in names]
    if not all(found):
        missing_extra(f"{', '.join(n for n, f in zip(names, found) if not f)} not installed: {install}")
    return found


def missing_extra(reason):
    if REQUIRE_EXTRAS:
        pytest.fail(f"NPR_REQUIRE_DEMO=1: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; python gpu_check.py runs them)")
    config.addinivalue_line("markers", "extra: needs the optional extra, requirements-demo.txt and Chromium (skipped "
                                       "without it; the second stage of .ci/run installs it and runs these)")
    config.addinivalue_line("markers", "slow: launches a script, trains or drives the browser (the fast loop, "
                                       "-m 'not slow', leaves it out)")
    # gradio's queue calls pandas options that pandas 3 deprecates; nothing of ours to change.
    config.addinivalue_line("filterwarnings", "ignore:'future.no_silent_downcasting' is deprecated")
    config.addinivalue_line("filterwarnings", "ignore:The copy keyword is deprecated")


def run_script(*args, env=None, cwd=ROOT, timeout=600):
    """Run ``python <args>`` (a script path relative to the repository, or ``-m module``) as a
    process of its own, for tests where the process boundary is the point (exit codes, one-line
    errors, signals, torchrun); stdout and stderr captured as text."""
    argv = list(args)
    if argv and str(argv[0]).endswith(".py") and not os.path.isabs(argv[0]):
        argv[0] = os.path.join(ROOT, argv[0])
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def write_leaf(leaf, n_real=4, n_fake=4, size=(32, 32), seed=0):
    """A 0_real / 1_fake leaf of random PNGs; fakes carry a 2x2 nearest-neighbour pattern."""
    rng = np.random.default_rng(seed)
    for name, n in (("0_real", n_real), ("1_fake", n_fake)):
        os.makedirs(os.path.join(leaf, name), exist_ok=True)
        for i in range(n):
            w, h = size
            Image.fromarray(pixels(rng, h, w, fake=name == "1_fake")).save(os.path.join(leaf, name, f"{i:03d}.png"))


def pixels(rng, h, w, fake):
    """Random RGB pixels of ``h`` x ``w``; a fake one repeats each pixel 2x2 (nearest-neighbour
    up-sampling, the trace NPR reads)."""
    if fake:
        small = rng.integers(0, 256, (h // 2 + 1, w // 2 + 1, 3), dtype=np.uint8)
        return small.repeat(2, 0).repeat(2, 1)[:h, :w]
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# A training run small enough for a test, on the CPU (``--gpu_ids -1``) in the test's process
# (``--num_threads 0``): the options each test adds to its data, run folder and epochs.
TINY_RUN = ["--batch_size", "4", "--loadSize", "32", "--cropSize", "24"]
ON_CPU = ["--gpu_ids", "-1", "--num_threads", "0"]


def tiny_run(data, ckpts, *extra):
    """train.py's options for a tiny run on ``data`` into ``ckpts``, then ``extra`` (a later value
    of an option wins)."""
    return ["--dataroot", str(data), "--checkpoints_dir", str(ckpts), *TINY_RUN, *ON_CPU, *map(str, extra)]


@pytest.fixture
def tiny_dataset(tmp_path):
    """<root>/{train,val}/{car,cat}/... and <root>/test/{progan,stylegan}/..."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for k, cat in enumerate(("car", "cat")):
            write_leaf(str(root / split / cat), 6 if split == "train" else 3, 6 if split == "train" else 3,
                       seed=k + (10 if split == "val" else 0))
    write_leaf(str(root / "test" / "progan"), 3, 3, seed=20)
    write_leaf(str(root / "test" / "stylegan" / "bedroom"), 2, 2, seed=21)
    return root


@pytest.fixture
def checkpoint(tmp_path):
    """An untrained NPR network's checkpoint (seed 0)."""
    torch.manual_seed(0)
    path = str(tmp_path / "m.pth")
    torch.save({"model": resnet50().state_dict()}, path)
    return path


class SmallDisk:
    """A file system of its own, ``size`` bytes (tmpfs), at ``path``; ``fill(free)`` leaves about
    ``free`` bytes of it free (tmpfs hands out whole pages), ``used()`` says what is taken."""

    def __init__(self, path, size):
        self.path, self.size = str(path), size
        os.makedirs(self.path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", self.path], capture_output=True,
                           text=True)
        if r.returncode:
            pytest.skip(f"a small file system for the full-disk tests needs mount (root): {r.stderr.strip()}")

    def fill(self, free):
        filler = os.path.join(self.path, ".filler")
        with open(filler, "ab") as f:
            f.truncate(0)
            try:
                f.write(b"\0" * max(0, self.free() - free))
            except OSError:
                pass

    def unfill(self):
        if os.path.exists(os.path.join(self.path, ".filler")):
            os.remove(os.path.join(self.path, ".filler"))

    def free(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def used(self):
        return self.size - self.free()

    def close(self):
        subprocess.run(["umount", "-l", self.path], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """``SmallDisk(size)``: file systems of their own, unmounted at the end of the test."""
    disks = []

    def make(size=4 << 20):
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size))
        return disks[-1]
    yield make
    for d in disks:
        d.close()


@pytest.fixture(scope="module")
def scan_setup(tmp_path_factory):
    """A checkpoint and a folder of 300 small images."""
    tmp = tmp_path_factory.mktemp("terminal")
    ckpt = str(tmp / "m.pth")
    torch.save({"model": resnet50().state_dict()}, ckpt)
    rng = np.random.default_rng(0)
    os.makedirs(tmp / "imgs")
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp / "imgs" / f"{i:03d}.png")
    return tmp, ckpt


def hostile_leaf(root):
    """A 0_real / 1_fake leaf holding, besides real PNGs, a FIFO and a link to /dev/zero named
    like images."""
    rng = np.random.default_rng(0)
    for name in ("0_real", "1_fake"):
        os.makedirs(root / name)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    os.mkfifo(root / "1_fake" / "fifo.png")
    os.symlink("/dev/zero", root / "0_real" / "zero.png")
    return root


N_REAL = 3  # the good real images beside the hostile corpus


def names(status, *kinds):
    """The corpus files whose status is one of ``kinds``."""
    return [n for n, s in status.items() if s in kinds]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tmp, status): <tmp>/suites/hostile/gen/{0_real: 3 good PNGs, 1_fake: the corpus}, a checkpoint m.pth."""
    tmp = tmp_path_factory.mktemp("hostile")
    gen = tmp / "suites" / "hostile" / "gen"
    write_leaf(str(gen), N_REAL, 0, size=(20, 20))
    status = write_hostile_corpus(str(gen / "1_fake"))
    torch.manual_seed(0)
    torch.save(resnet50().state_dict(), str(tmp / "m.pth"))
    return tmp, status


class StopAfter:
    """Stands in for GracefulStop: 'receives' SIGTERM after ``n`` training steps."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def install(self):
        pass

    @property
    def signum(self):
        self.calls += 1
        return signal.SIGTERM if self.calls > self.n else None


def weights(path):
    return torch.load(path, weights_only=True)["model"]


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


PAGE = 4096


def leftovers(folder):
    """Temporary and staging files left in ``folder`` (the disk's filler aside)."""
    return [n for n in os.listdir(folder) if n.startswith(".") and n != ".filler" and not n.endswith(".lock")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args, nodes=1, nproc=2, port=None, cwd=ROOT):
    """A torchrun launch (``Popen``, output in ``stdout``): one node of ``nproc`` processes
    (``--standalone``), or one of ``nodes`` node launches meeting at 127.0.0.1:``port``."""
    where = ["--standalone", f"--nproc_per_node={nproc}"] if nodes == 1 else \
        ["--nnodes", str(nodes), "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
         f"127.0.0.1:{port}", "--rdzv_id", f"npr-test-{port}"]
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *where, os.path.join(ROOT, script),
                             *map(str, args)], cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*procs, timeout=300, ok=True):
    """The outputs of the ``torchrun`` launches ``procs`` once they end; with ``ok``, each must exit 0."""
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 or not ok, out[-3000:]
    return outs


def race(fn, n, timeout=120):
    """Run ``fn`` in ``n`` forked processes released at the same moment; their exit codes."""
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()

    def start():
        go.wait()
        fn()
    procs = [ctx.Process(target=start) for _ in range(n)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout)
    return [p.exitcode for p in procs]


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP handler for the local test servers that does not log each request."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_server(handler):
    """An HTTP server on 127.0.0.1 (a free port) answering with ``handler``; its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
