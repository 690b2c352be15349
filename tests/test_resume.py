import contextlib
import os
import signal

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import train

pytestmark = pytest.mark.slow  # every test trains


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


@pytest.mark.parametrize("recipe", [
    [],
    # SAFE's operator and recipe: AdamW, a per-step warm-up (interrupted inside it) and cosine, its augmentations
    ["--operator", "dwt", "--recipe", "safe", "--mask_patch", "4"],
], ids=["paper", "safe"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_dataset, tmp_path, monkeypatch, recipe):
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--batch_size", "4",
              "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0", "--niter", "2",
              "--deterministic", "--blur_prob", "0.3", "--jpg_prob", "0.3", "--jpg_method", "pil", *recipe]
    assert train.main(common + ["--name", "straight"]) == 0

    monkeypatch.setattr(train, "GracefulStop", lambda: StopAfter(4))  # stop mid-epoch 0 (6 steps/epoch)
    assert train.main(common + ["--name", "interrupted"]) == 128 + signal.SIGTERM
    state = torch.load(os.path.join(tmp_path, "interrupted", "model_epoch_latest.pth"), weights_only=True)
    assert state["epoch"] == 0 and state["step_in_epoch"] == 5 and state["total_steps"] == 5
    assert not os.path.exists(os.path.join(tmp_path, "interrupted", "model_epoch_last.pth"))

    monkeypatch.setattr(train, "GracefulStop", lambda: StopAfter(10**9))
    assert train.main(common + ["--name", "interrupted", "--continue_train"]) == 0
    a = weights(os.path.join(tmp_path, "straight", "model_epoch_last.pth"))
    b = weights(os.path.join(tmp_path, "interrupted", "model_epoch_last.pth"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    import pytest

    from util import UserError
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--name", "nan",
              "--batch_size", "4", "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0"]
    assert train.main(common + ["--niter", "1"]) == 0
    before = weights(os.path.join(tmp_path, "nan", "model_epoch_latest.pth"))
    real_bce = torch.nn.BCEWithLogitsLoss
    monkeypatch.setattr(torch.nn, "BCEWithLogitsLoss", lambda: (lambda x, y: real_bce()(x, y) * float("nan")))
    with pytest.raises(UserError, match="loss became nan"):
        train.main(common + ["--niter", "2", "--continue_train"])
    after = weights(os.path.join(tmp_path, "nan", "model_epoch_latest.pth"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sigint_saves_latest_and_says_how_to_resume(tiny_dataset, tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-u", os.path.join(root, "train.py"), "--dataroot", str(tiny_dataset),
           "--checkpoints_dir", str(tmp_path), "--name", "sig", "--batch_size", "4", "--loadSize", "32",
           "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "1", "--niter", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "(Val @ epoch 1)" in line:
            proc.send_signal(signal.SIGINT)
            break
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "--continue_train" in out and "Traceback" not in out
    state = torch.load(os.path.join(tmp_path, "sig", "model_epoch_latest.pth"), weights_only=True)
    assert state["total_steps"] >= 12


def test_unwritable_output_folder_reported_before_training(tiny_dataset, tmp_path):
    import pytest

    from util import UserError
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not writable"):
        train.main(["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(blocker), "--gpu_ids", "-1"])


def test_a_damaged_latest_checkpoint_names_the_others_and_that_advice_resumes(tiny_dataset, tmp_path):
    from networks import CheckpointError
    from util import UserError
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--batch_size", "4",
              "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0", "--name", "r"]
    os.makedirs(tmp_path / "r" / "model_epoch_best.pth")  # a folder where a checkpoint goes: before any epoch
    with pytest.raises(UserError, match="model_epoch_best.pth is a folder"):
        train.main(common + ["--niter", "1"])
    os.rmdir(tmp_path / "r" / "model_epoch_best.pth")
    assert train.main(common + ["--niter", "1"]) == 0
    latest = tmp_path / "r" / "model_epoch_latest.pth"
    latest.write_bytes(latest.read_bytes()[:1000])  # damaged on disk after it was written
    with pytest.raises(CheckpointError, match=r"not a readable .*; resume from another checkpoint of this run with "
                                              r"--epoch \(.*last") as err:
        train.main(common + ["--niter", "2", "--continue_train"])
    assert "\n" not in str(err.value)
    assert train.main(common + ["--niter", "2", "--continue_train", "--epoch", "last"]) == 0
    assert torch.load(tmp_path / "r" / "model_epoch_last.pth", weights_only=True)["epoch"] == 2


def test_a_second_train_py_on_one_run_is_refused_while_the_first_trains(tiny_dataset, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    from util import UserError
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--batch_size", "4",
              "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0", "--name", "r",
              "--niter", "1"]
    os.makedirs(tmp_path / "r")
    lock = str(tmp_path / "r" / "train.lock")
    holder = subprocess.Popen([sys.executable, "-c", "import time; from files import RunLock; "
                               f"RunLock({lock!r}, 'x', '--name').acquire(); print('held', flush=True); "
                               "time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"held by pid {holder.pid} .*another train.py is training this run; "
                                            "wait for it to end, or choose another --name"):
            train.main(common)
        assert not os.path.exists(tmp_path / "r" / "model_epoch_last.pth")
    finally:
        holder.kill()
        holder.wait()
    assert train.main(common) == 0  # the holder is gone: its lock went with it


def test_a_resume_with_another_batch_size_or_other_images_is_refused_or_said(tiny_dataset, tmp_path, monkeypatch,
                                                                            capsys):
    import shutil

    from util import UserError
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--loadSize", "32", "--cropSize",
              "24", "--gpu_ids", "-1", "--num_threads", "0", "--niter", "2", "--name", "r"]
    monkeypatch.setattr(train, "GracefulStop", lambda: StopAfter(2))  # 3 of the 6 steps of epoch 0: 12 images done
    assert train.main(common + ["--batch_size", "4"]) == 128 + signal.SIGTERM
    monkeypatch.setattr(train, "GracefulStop", lambda: StopAfter(10**9))
    # its place in the epoch is counted in batches of 4: batches of 8 would skip 24 images, the whole epoch
    with pytest.raises(UserError, match="stopped 3 steps into epoch 0 with batches of 4; resume with --batch_size 4"):
        train.main(common + ["--batch_size", "8", "--continue_train"])
    shutil.rmtree(tiny_dataset / "train" / "car")  # 24 images then, 9 now: fewer than the 12 already seen
    for name in os.listdir(tiny_dataset / "train" / "cat" / "0_real")[:3]:
        os.remove(tiny_dataset / "train" / "cat" / "0_real" / name)
    capsys.readouterr()
    assert train.main(common + ["--batch_size", "4", "--continue_train"]) == 0  # a negative __len__ crashed it
    out = capsys.readouterr().out
    assert "The training images changed since" in out and "(24 images then, 9 now): the rest of epoch 0" in out
    assert torch.load(tmp_path / "r" / "model_epoch_last.pth", weights_only=True)["train_images"].startswith("9:")


def test_the_resume_command_printed_after_a_stop_resumes_from_the_latest_checkpoint(tiny_dataset, tmp_path,
                                                                                    monkeypatch, capsys):
    import shlex
    common = ["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path), "--name", "run one",
              "--batch_size", "4", "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0"]
    assert train.main(common + ["--niter", "1"]) == 0
    monkeypatch.setattr(train, "GracefulStop", lambda: StopAfter(8))  # resumed from 'last', stopped in epoch 2
    assert train.main(common + ["--niter", "3", "--continue_train", "--epoch", "last"]) == 128 + signal.SIGTERM
    said = capsys.readouterr().out
    command = said.split("Resume with:\n  python train.py ", 1)[1].splitlines()[0]
    assert "--epoch" not in command  # '--epoch last' went back to the end of epoch 0, losing the steps since
    monkeypatch.setattr(train, "GracefulStop", lambda: StopAfter(10**9))
    assert train.main(shlex.split(command)) == 0  # the name with a space is quoted
    out = capsys.readouterr().out
    assert f"Resuming from {tmp_path / 'run one' / 'model_epoch_latest.pth'}: epoch 2, step 3 of the epoch, 15 steps" in out


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
    common = ["--dataroot", str(data), "--checkpoints_dir", str(root / "runs"), "--batch_size", "4",
              "--loadSize", "32", "--cropSize", "24", "--gpu_ids", "-1", "--num_threads", "0", "--name", "r"]
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

