"""train.py: an interrupted run resumes to the uninterrupted weights, a NaN loss keeps the last good
checkpoint, Ctrl-C saves and says how to resume (and that command resumes), one train.py per run, and a
resume that cannot go on is refused or said before any step."""
import os
import signal

import pytest
import torch
from conftest import StopAfter, tiny_run, weights

import train


pytestmark = pytest.mark.slow  # every test trains


@pytest.mark.parametrize("recipe", [
    [],
    # SAFE's operator and recipe: AdamW, a per-step warm-up (interrupted inside it) and cosine, its augmentations
    ["--operator", "dwt", "--recipe", "safe", "--mask_patch", "4"],
], ids=["paper", "safe"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_dataset, tmp_path, monkeypatch, recipe):
    common = tiny_run(tiny_dataset, tmp_path, "--niter", "2", "--deterministic", "--blur_prob", "0.3", "--jpg_prob",
                      "0.3", "--jpg_method", "pil", *recipe)
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
    common = tiny_run(tiny_dataset, tmp_path, "--name", "nan")
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
    cmd = [sys.executable, "-u", os.path.join(root, "train.py"),
           *tiny_run(tiny_dataset, tmp_path, "--name", "sig", "--num_threads", "1", "--niter", "1000")]
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
    common = tiny_run(tiny_dataset, tmp_path, "--name", "r")
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
    common = tiny_run(tiny_dataset, tmp_path, "--name", "r", "--niter", "1")
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
    common = tiny_run(tiny_dataset, tmp_path, "--niter", "2", "--name", "r")
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
    common = tiny_run(tiny_dataset, tmp_path, "--name", "run one")
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
