import contextlib
import hashlib
import os
import signal
import tempfile
import zipfile

import pytest
import torch
from conftest import StopAfter, tiny_run
from hypothesis import given
from hypothesis import strategies as st

import train
from networks import CheckpointError, load_detector, predict_proba, resnet50, save_checkpoint
from networks.checkpoint import load_checkpoint


def _trained_like_model():
    torch.manual_seed(0)
    m = resnet50(num_classes=1)
    for mod in m.modules():  # non-trivial BN statistics so a lost buffer would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("form", ["plain", "wrapped", "module", "wrapped_module"])
def test_round_trip_all_formats(tmp_path, form):
    m = _trained_like_model()
    sd = m.state_dict()
    if "module" in form:
        sd = {"module." + k: v for k, v in sd.items()}
    obj = {"model": sd, "optimizer": {}, "total_steps": 3} if "wrapped" in form else sd
    path = str(tmp_path / "ck.pth")
    torch.save(obj, path)
    loaded = load_detector(path, device="cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    assert not loaded.training


def test_mismatch_lists_missing_and_unexpected(tmp_path):
    sd = resnet50(num_classes=1).state_dict()
    sd.pop("fc1.weight")
    sd["fc.weight"] = torch.zeros(1, 512)
    path = str(tmp_path / "bad.pth")
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_detector(path, device="cpu")
    assert "fc1.weight" in str(e.value) and "fc.weight" in str(e.value)


def test_atomic_save_keeps_previous_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pth")
    save_checkpoint({"a": torch.ones(2)}, path)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        save_checkpoint({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["latest.pth"]  # no temporary file left beside it


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/npr_pwned_marker",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = "/tmp/npr_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = str(tmp_path / "evil.pth")
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing") as err:
        load_checkpoint(path)
    assert not os.path.exists(marker)
    # The advice is the safe one; PyTorch's own hint (weights_only=False) would run the file's code.
    assert "weights_only" not in str(err.value) and "plain state dict" in str(err.value)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "trunc.pth"
    torch.save(resnet50().state_dict(), str(bad))
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match=r"no checkpoint at .* \(nothing there\); check the path"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match=r"no checkpoint at .* \(a folder: give the .pth file in it\)"):
        load_checkpoint(str(tmp_path))


def test_a_pickle_that_is_refused_says_so_in_one_line(tmp_path, recwarn):
    import pickle
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"model": resnet50().state_dict()}, protocol=4))
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(str(path))
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]  # no library warning above the line


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_of_a_diverged_training_are_refused(tmp_path, bad):
    """A NaN weight makes every P(fake) NaN, and NaN > threshold is False: every image would read
    as real."""
    sd = resnet50(num_classes=1).state_dict()
    sd["layer2.0.bn1.running_var"][3] = bad
    path = str(tmp_path / "diverged.pth")
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="NaN or infinite values in 1 tensor.*layer2.0.bn1.running_var.*diverged"):
        load_detector(path, device="cpu")


# What a checkpoint from the internet may hold in place of a weight, or of a weight's name.
ODD_VALUES = {
    "a list": lambda v: [v], "a number": lambda v: 1.5, "None": lambda v: None, "a string": lambda v: "w",
    "meta": lambda v: torch.empty_like(v, device="meta"), "complex": lambda v: v.to(torch.complex64),
    "sparse": lambda v: v.reshape(v.shape[0], -1).to_sparse() if v.dim() else v.reshape(1).to_sparse(),
    "half": lambda v: v.half(), "whole numbers": lambda v: v.long(), "empty": lambda v: torch.empty(0),
    "0-d": lambda v: torch.tensor(1.0), "bool": lambda v: v > 0,
}


ODD_KEYS = {"an int": lambda k: 7, "a tuple": lambda k: (k,), "prefixed": lambda k: "module." + k,
            "dropped": None, "bytes": lambda k: k.encode()}


@given(values=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(ODD_VALUES))), max_size=3),
       keys=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(ODD_KEYS))), max_size=2),
       wrapper=st.sampled_from([None, "model", "state_dict"]))
def test_any_edit_of_a_checkpoint_loads_a_working_model_or_is_one_error(values, keys, wrapper):
    original = resnet50(num_classes=1).state_dict()
    sd, names = dict(original), list(original)
    for i, what in values:  # each edit replaces an original weight
        sd[names[i % len(names)]] = ODD_VALUES[what](original[names[i % len(names)]])
    for i, what in keys:
        name = names[i % len(names)]
        if name in sd:
            value = sd.pop(name)
            if ODD_KEYS[what] is not None:
                sd[ODD_KEYS[what](name)] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "edited.pth")
        torch.save(sd if wrapper is None else {wrapper: sd}, path)
        try:
            model = load_detector(path, device="cpu")
        except CheckpointError as e:
            assert "\n" not in str(e) and "checkpoint" in str(e)
            return
    assert torch.isfinite(predict_proba(model, torch.rand(2, 3, 32, 32))).all()


def test_predict_proba_inputs(tmp_path):
    import numpy as np
    from PIL import Image
    m = _trained_like_model()
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    p = str(tmp_path / "a.png")
    Image.fromarray(arr).save(p)
    by_path = predict_proba(m, [p])
    by_pil = predict_proba(m, Image.fromarray(arr))
    by_tensor = predict_proba(m, torch.from_numpy(arr).permute(2, 0, 1))
    assert torch.allclose(by_path, by_pil) and torch.allclose(by_path, by_tensor)
    assert by_path.shape == (1,) and 0 <= by_path.item() <= 1


@pytest.mark.parametrize("device", ["cuda:99", "tpu", "no-such-device"])
def test_a_device_this_machine_lacks_is_one_line(tmp_path, device):
    from util import UserError
    path = str(tmp_path / "m.pth")
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(UserError, match=f"device '{device}' cannot be used here .*use 'cpu'"):
        load_detector(path, device=device)


@pytest.mark.parametrize("value, kept", [
    (0.7, 0.7), (torch.tensor(0.25), 0.25), (0, 0.0), (1, 1.0), (float("nan"), None), (2.0, None), (-1.0, None),
    ("abc", None), ([0.5], None), (True, None), (torch.tensor([0.5, 0.6]), None)])
def test_a_stored_threshold_that_is_no_probability_is_ignored_with_a_warning(tmp_path, caplog, value, kept):
    """NaN called every image real, 2.0 every image real, -1 every image fake; text crashed."""
    path = str(tmp_path / "t.pth")
    torch.save({"model": resnet50(num_classes=1).state_dict(), "threshold": value}, path)
    with caplog.at_level("WARNING", logger="npr"):
        model = load_detector(path, device="cpu")
    assert model.threshold == kept
    assert ("stores a threshold that is not a probability" in caplog.text) == (kept is None)


# ----------------------------------------------------------------------------- bounded loading

def test_the_weight_budget_is_the_networks_own():
    from networks.checkpoint import WEIGHT_BYTES
    sd = resnet50().state_dict()
    assert WEIGHT_BYTES == sum(v.numel() * v.element_size() for v in sd.values() if v.is_floating_point())


def with_record(src, dst, name, nbytes, compress=zipfile.ZIP_DEFLATED):
    """A copy of the checkpoint ``src`` whose record ``name`` (an existing storage's, or a new one)
    holds ``nbytes`` zero bytes, written ``compress``-ed: a deflated gigabyte takes a megabyte."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        prefix = z.namelist()[0].split("/")[0]
        for info in z.infolist():
            if info.filename != f"{prefix}/{name}":
                out.writestr(info, z.read(info.filename))
        info = zipfile.ZipInfo(f"{prefix}/{name}")
        info.compress_type = compress
        with out.open(info, "w", force_zip64=True) as f:
            block = bytes(1 << 24)
            for start in range(0, nbytes, len(block)):
                f.write(block[:min(len(block), nbytes - start)])
    return dst


@pytest.mark.parametrize("record", ["data/0", "data/extra"])
@pytest.mark.parametrize("over", [-1, 1])
def test_declared_sizes_around_the_limit(tmp_path, monkeypatch, record, over):
    """A record that takes the archive's declared total just over the limit is refused before it is
    read; just under, the file loads (an extra record) or fails as corrupt (a storage's record of
    the wrong size): one line either way."""
    from networks import checkpoint
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 8_000_000)
    base = str(tmp_path / "base.pth")
    torch.save(resnet50().state_dict(), base)
    with zipfile.ZipFile(base) as z:
        others = sum(i.file_size for i in z.infolist() if not i.filename.endswith("/" + record))
    path = with_record(base, str(tmp_path / "edited.pth"), record, 8_000_000 - others + over)
    if over > 0:
        with pytest.raises(CheckpointError, match=r"refusing to load .*its records declare 8 MB, over the 8 MB"):
            load_checkpoint(path)
    elif record == "data/extra":
        assert len(load_checkpoint(path)) == len(resnet50().state_dict())
    else:
        with pytest.raises(CheckpointError) as e:
            load_detector(path, device="cpu")
        assert "\n" not in str(e.value)


BOMBS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from networks import CheckpointError, load_detector
load_detector({base!r}, device="cpu")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
said = []
for path in sys.argv[1:]:
    try:
        load_detector(path, device="cpu")
        said.append("loaded")
    except CheckpointError as e:
        said.append(str(e))
print(repr(said))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow
def test_a_checkpoint_that_declares_gigabytes_is_refused_in_bounded_memory(tmp_path):
    """A 6 MB file holding a deflated half gigabyte was read whole (one of 9 MB held 3 GiB); so are a
    plain file over the limit and a storage record of half a gigabyte. Peak memory stays that of
    loading a real checkpoint."""
    import subprocess
    import sys

    from conftest import ROOT
    from networks.checkpoint import MAX_CHECKPOINT_BYTES
    base = str(tmp_path / "base.pth")
    torch.save(resnet50().state_dict(), base)
    paths = [with_record(base, str(tmp_path / "extra.pth"), "data/extra", 1 << 29),
             with_record(base, str(tmp_path / "storage.pth"), "data/0", 1 << 29),
             with_record(base, str(tmp_path / "stored.pth"), "data/extra", MAX_CHECKPOINT_BYTES,
                         zipfile.ZIP_STORED)]
    with open(tmp_path / "big.bin", "wb") as f:  # sparse: over the limit on paper, nothing on disk
        f.truncate(MAX_CHECKPOINT_BYTES + 1)
    paths.append(str(tmp_path / "big.bin"))
    assert os.path.getsize(paths[0]) < 8_000_000  # the checkpoint and a deflated half gigabyte
    r = subprocess.run([sys.executable, "-c", BOMBS.format(root=ROOT, base=base), *paths], capture_output=True,
                       text=True, timeout=600)
    said, grew_mb = r.stdout.strip().splitlines()
    assert all("refusing to load" in s and "not a checkpoint of this network" in s for s in eval(said)), said
    assert int(grew_mb) < 64, f"peak memory grew by {grew_mb} MB"


@pytest.mark.parametrize("depth, refused", [(30, False), (32, False), (33, True), (20_000, True)])
@pytest.mark.parametrize("where", ["key", "value"])
def test_nesting_is_bounded_and_one_line(tmp_path, depth, refused, where):
    """A state dict keyed by a deeply nested tuple was a RecursionError traceback."""
    import sys
    nested = "x"
    for _ in range(depth - 1):  # inside the checkpoint's own dict: depth in all
        nested = (nested,)
    sd = resnet50().state_dict()
    ckpt = {"model": sd, "note": nested} if where == "value" else {**sd, nested: torch.zeros(1)}
    path = str(tmp_path / "deep.pth")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 3 * depth + 1000))  # for pickle to write it
    try:
        torch.save(ckpt, path)
    finally:
        sys.setrecursionlimit(limit)
    if refused:
        with pytest.raises(CheckpointError, match=r"nests containers more than 32 deep") as e:
            load_detector(path, device="cpu")
    elif where == "value":
        assert load_detector(path, device="cpu").sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    else:  # shallow enough to read, and then not a parameter name
        with pytest.raises(CheckpointError, match="keys are not parameter names") as e:
            load_detector(path, device="cpu")
    assert not refused or "\n" not in str(e.value)


# ----------------------------------------------------------------------------- damaged or foreign checkpoints

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """(the arguments, a run folder with the ends of epoch 0 and a 'latest' 3 steps into epoch 1)."""
    import shutil

    from conftest import write_leaf
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    for split, n in (("train", 6), ("val", 3)):
        write_leaf(str(data / split / "car"), n, n, seed=len(split))
    common = tiny_run(data, root / "runs", "--name", "r")
    assert train.main(common + ["--niter", "1"]) == 0
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "GracefulStop", lambda: StopAfter(2))
        assert train.main(common + ["--niter", "3", "--continue_train", "--epoch", "last"]) == 128 + signal.SIGTERM
    shutil.rmtree(root / "runs" / "r" / "tensorboard")
    return common + ["--niter", "3"], root / "runs" / "r"


def resume_edited(stopped_run, tmp_path, edit, monkeypatch, capfd):
    """Resume a copy of the stopped run whose latest checkpoint ``edit`` changed; what happened:
    'resumed', or the UserError's line. Nothing printed a traceback (a logging error does)."""
    import shutil

    from util import UserError
    common, run = stopped_run
    where = tmp_path / f"c{os.getpid()}{len(os.listdir(tmp_path))}"
    shutil.copytree(run, where / "r")
    latest = where / "r" / "model_epoch_latest.pth"
    ckpt = torch.load(latest, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, latest)
    args = [a if a != str(run.parent) else str(where) for a in common]
    monkeypatch.setattr(train, "GracefulStop", lambda: StopAfter(0))  # one step shows the state was taken
    capfd.readouterr()
    try:
        assert train.main(args + ["--continue_train"]) == 128 + signal.SIGTERM
        said = "resumed"
    except UserError as e:
        assert "\n" not in str(e) and "Traceback" not in str(e)
        said = str(e)
    assert "Traceback" not in capfd.readouterr().err
    return said


ODD = [None, "x", 1.5, -3, 10**9, True, [], {}, torch.zeros(3), torch.zeros(7, dtype=torch.uint8)]


def checkpoint_edits():
    """Every field of a training checkpoint, deleted or given a value of another kind, shape or range."""
    def delete(path):
        def f(ckpt):
            *parents, last = path
            for p in parents:
                ckpt = ckpt[p]
            ckpt.pop(last, None)
        return f

    def put(path, value):
        def f(ckpt):
            *parents, last = path
            for p in parents:
                ckpt = ckpt[p]
            ckpt[last] = value
        return f

    def reshape_moment(i):
        def f(ckpt):
            state = ckpt["optimizer"]["state"]
            entry = state[sorted(state)[i % len(state)]]
            entry["exp_avg"] = torch.zeros(*entry["exp_avg"].shape, 2)
        return f
    top = ["model", "optimizer", "rng", "epoch", "step_in_epoch", "total_steps", "best_ap", "epochs_no_improve",
           "threshold", "train_images", "opt", "lr", "scaler", "model_ema", "world_size"]
    inner = [("rng", k) for k in ("python", "numpy", "numpy_pos", "torch", "cuda")] + \
        [("optimizer", "state"), ("optimizer", "param_groups")]
    paths = st.sampled_from([(k,) for k in top] + inner)
    return st.one_of(st.builds(delete, paths), st.builds(put, paths, st.sampled_from(ODD)),
                     st.builds(put, st.sampled_from([(k,) for k in ("epoch", "step_in_epoch", "total_steps")]),
                               st.integers(-5, 10**9)),
                     st.builds(reshape_moment, st.integers(0, 200)))


@pytest.mark.slow
@given(edits=st.lists(checkpoint_edits(), min_size=1, max_size=2))
def test_any_edit_of_a_training_checkpoint_resumes_or_is_one_line_naming_the_others(stopped_run, tmp_path,
                                                                                   monkeypatch, capfd, edits):
    def edit(ckpt):
        for e in edits:
            with contextlib.suppress(KeyError, TypeError, IndexError, AttributeError, ZeroDivisionError):
                e(ckpt)  # an edit of what an earlier one removed does nothing
    said = resume_edited(stopped_run, tmp_path, edit, monkeypatch, capfd)
    if said != "resumed" and "cannot be resumed" in said:
        assert "resume from another checkpoint of this run with --epoch (" in said and "last" in said


@pytest.mark.slow
@pytest.mark.parametrize("edit, says", [
    (lambda c: c.pop("rng"), "it has no 'rng' entry"),  # KeyError: 'rng'
    (lambda c: c["rng"].update(torch=torch.zeros(100, dtype=torch.uint8)), "random state 'torch' is not"),
    (lambda c: c.update(optimizer={}), "'optimizer' entry is not an optimizer's state"),  # KeyError: 'param_groups'
    (lambda c: c.update(epoch=-3), "counter 'epoch' is -3, not a whole number"),
    (lambda c: c.update(epoch=10**9), "at epoch 1000000000, past --niter 3"),
    (lambda c: c.update(step_in_epoch=10**6, total_steps=10**6), "1000000 steps into epoch 1, where an epoch of"),
])
def test_what_the_attack_found_is_one_line(stopped_run, tmp_path, monkeypatch, capfd, edit, says):
    said = resume_edited(stopped_run, tmp_path, edit, monkeypatch, capfd)
    assert says in said and "cannot be resumed" in said and "--epoch (" in said, said
