import importlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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
            if name == "1_fake":
                small = rng.integers(0, 256, (h // 2 + 1, w // 2 + 1, 3), dtype=np.uint8)
                arr = small.repeat(2, 0).repeat(2, 1)[:h, :w]
            else:
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(leaf, name, f"{i:03d}.png"))


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
