"""test.py over a benchmark folder as it is found on a shared disk: generators half copied, empty,
with one class only. Each is named once, the others are still scored, the Mean averages the
same generators for every column, and results.json is strict JSON."""
import importlib.util
import json
import os

import pytest
import torch
from conftest import ROOT, write_leaf

from networks import resnet50


def load_test_py():
    """test.py as a module (its name would resolve to Python's own ``test`` package)."""
    spec = importlib.util.spec_from_file_location("npr_test_script", os.path.join(ROOT, "test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strict_json(path):
    with open(path) as f:
        return json.load(f, parse_constant=lambda c: pytest.fail(f"{c} in {path}: not JSON"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "m.pth"
    torch.save(resnet50().state_dict(), str(path))
    return str(path)


@pytest.mark.parametrize("n_real,n_fake", [(2, 0), (0, 2)])
def test_generators_that_cannot_be_scored_are_named_and_the_rest_is_scored(tmp_path, capsys, ckpt, n_real, n_fake):
    suite = tmp_path / "data" / "ForenSynths"
    write_leaf(str(suite / "ProGAN"), 3, 3, seed=1)
    write_leaf(str(suite / "CycleGAN" / "horse"), 2, 2, seed=2)  # category folders, as ProGAN's test set
    write_leaf(str(suite / "StyleGAN"), 2, 0)
    os.rmdir(suite / "StyleGAN" / "1_fake")  # half copied: no 1_fake folder at all
    write_leaf(str(suite / "BigGAN"), 0, 0)  # both folders, no image
    write_leaf(str(suite / "Deepfake"), n_real, n_fake)  # one class only
    (suite / "GauGAN").write_text("a file where a folder goes")
    res = tmp_path / "res"
    code = load_test_py().main(["--dataroot", str(tmp_path / "data"), "--model_path", ckpt, "--gpu_ids", "-1",
                                "--num_threads", "0", "--no_resize", "--no_crop", "--results_dir", str(res)])
    out = capsys.readouterr().out
    assert code == 0
    assert "StyleGAN skipped" in out and "no folder pair 0_real and 1_fake" in out
    assert "BigGAN skipped: no images" in out
    assert f"Deepfake: no {'fake' if n_real else 'real'} image was scored" in out and "left out of the Mean" in out
    rows = {r["generator"]: r for r in strict_json(res / "results.json")["results"]}
    assert set(rows) == {"ProGAN", "CycleGAN", "Deepfake", "Mean"}
    assert rows["Deepfake"]["ap"] is None and rows["Deepfake"]["n_scored"] == 2
    for k in ("acc", "ap", "r_acc", "f_acc", "paper_acc"):  # every column averages the same two generators
        assert rows["Mean"][k] == pytest.approx((rows["ProGAN"][k] + rows["CycleGAN"][k]) / 2), k
    assert rows["Mean"]["n_scored"] == 6 + 4 + 2


@pytest.mark.parametrize("missing", ["1_fake", "0_real"])
def test_training_on_a_split_with_one_class_says_so(tmp_path, capsys, missing):
    import train
    data = tmp_path / "data"
    write_leaf(str(data / "train" / "car"), *((3, 0) if missing == "1_fake" else (0, 3)), size=(24, 24))
    write_leaf(str(data / "val" / "car"), 2, 2, size=(24, 24), seed=1)
    assert train.main(["--dataroot", str(data), "--checkpoints_dir", str(tmp_path / "ck"), "--name", "one",
                       "--niter", "1", "--batch_size", "4", "--loadSize", "24", "--cropSize", "16", "--gpu_ids", "-1",
                       "--num_threads", "0"]) == 0
    real, fake = (3, 0) if missing == "1_fake" else (0, 3)
    out = capsys.readouterr().out
    assert f"the train split holds {real} real and {fake} fake images: the detector learns one class only" in out
    assert "the val split holds" not in out


@pytest.mark.parametrize("kind", ["a file", "a FIFO", "nothing"])
def test_a_dataroot_that_is_not_a_folder_says_what_it_is(tmp_path, kind):
    from data.benchmarks import find_suites
    from util import UserError
    root = tmp_path / "data"
    if kind == "a file":
        root.write_text("x")
    elif kind == "a FIFO":
        os.mkfifo(root)
    said = "does not exist" if kind == "nothing" else f"is {kind}, not a folder"  # a file "did not exist"
    with pytest.raises(UserError, match=f"--dataroot '{root}' {said}"):
        find_suites(str(root))


def test_a_bad_checkpoint_among_several_is_one_line_before_any_is_scored(tmp_path, ckpt, monkeypatch):
    from util import UserError
    write_leaf(str(tmp_path / "data" / "suite" / "gen"), 2, 2)
    (tmp_path / "cut.pth").write_bytes(open(ckpt, "rb").read()[:1000])  # a copy cut short
    test_py = load_test_py()
    scored = []
    monkeypatch.setattr(test_py, "evaluate_checkpoint", lambda path, *a: scored.append(path) or ([], (None, "none")))
    with pytest.raises(UserError, match="cut.pth' is not a readable PyTorch checkpoint"):
        test_py.main(["--dataroot", str(tmp_path / "data"), "--model_path", ckpt, ckpt, str(tmp_path / "cut.pth"),
                      "--gpu_ids", "-1", "--results_dir", str(tmp_path / "res")])
    assert scored == []  # the first two were scored (an hour each on the benchmark), then the third failed


def test_folder_names_that_are_not_utf8_are_scored_and_written(tmp_path, ckpt):
    """A generator folder (or the dataroot) named in Latin-1 on a shared disk: the scan finished,
    then writing results.csv (and the figures' labels) raised UnicodeEncodeError, losing it all."""
    root = os.fsdecode(os.fsencode(str(tmp_path)) + b"/data\xff")
    write_leaf(os.fsdecode(os.fsencode(root) + b"/suite/caf\xe9"), 2, 2)
    res = tmp_path / "res"
    assert load_test_py().main(["--dataroot", root, "--model_path", ckpt, "--gpu_ids", "-1", "--num_threads", "0",
                                "--results_dir", str(res), "--plots"]) == 0
    rows = strict_json(res / "results.json")["results"]
    assert [r["generator"] for r in rows] == ["caf\ufffd", "Mean"] and rows[0]["n_scored"] == 4
    assert "caf\ufffd" in (res / "results.csv").read_text(encoding="utf-8", errors="surrogateescape")
    assert os.fsencode(root) in (res / "opt.txt").read_bytes()  # the dataroot as it is on disk
