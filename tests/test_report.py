"""report.py through test.py's --results_dir: a disk that fills at any write of the results is one line,
the results already there stay whole, no temporary file is left, and a rerun after space is freed
finishes (small file systems of their own, tmpfs)."""
import os

import pytest
import torch
from conftest import leftovers, PAGE, write_leaf
from hypothesis import given
from hypothesis import strategies as st

import test as test_script
from networks import resnet50
from util import UserError


pytestmark = pytest.mark.slow  # many runs of predict.py and test.py


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n)) and n != ".filler"}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """(dataroot with a custom suite, checkpoint) for test.py."""
    root = tmp_path_factory.mktemp("eval")
    write_leaf(str(root / "data" / "mysuite" / "gen_a"), 4, 4, seed=1)
    write_leaf(str(root / "data" / "mysuite" / "gen_b"), 3, 5, seed=2)
    torch.manual_seed(0)
    torch.save({"model": resnet50().state_dict()}, str(root / "m.pth"))
    return str(root / "data"), str(root / "m.pth")


def run_test(evaluation, results, *extra):
    data, ckpt = evaluation
    return test_script.main(["--dataroot", data, "--model_path", ckpt, "--gpu_ids", "-1", "--num_threads", "0",
                             "--results_dir", results, *extra])


@given(free_pages=st.integers(0, 40), plots=st.booleans())
def test_test_py_on_a_disk_that_fills(evaluation, small_disk, free_pages, plots):
    disk = getattr(test_test_py_on_a_disk_that_fills, "disk", None)
    if disk is None or not os.path.ismount(disk.path):
        disk = test_test_py_on_a_disk_that_fills.disk = small_disk(2 << 20)
    results = os.path.join(disk.path, "results")
    disk.unfill()
    if not os.path.isdir(results):
        assert run_test(evaluation, results) == 0  # the previous results
    before = snapshot(results)
    disk.fill(free_pages * PAGE)
    extra = ["--plots"] if plots else []
    try:
        assert run_test(evaluation, results, *extra) == 0
    except UserError as e:
        assert "No space left on device" in str(e) and "free some space" in str(e) and "\n" not in str(e)
        assert snapshot(results) == before  # whole: every file as it was
    assert leftovers(results) == []
    disk.unfill()
    assert run_test(evaluation, results, *extra) == 0
    assert {"results.csv", "results.json", "results.md", "opt.txt"} <= set(os.listdir(results))
