"""distributed.py: the launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
checked in one place, one line for each bad value, and DistributedDataParallel training with gloo (2
processes on the CPU) equal to one process's. Launches over two nodes: tests/test_scaling.py."""
import os

import pytest
import torch
from conftest import finish, tiny_run, torchrun
from hypothesis import given
from hypothesis import strategies as st

import predict
import train
from distributed import launch_env
from util import UserError


VALUES = st.one_of(st.none(), st.integers(-2, 5).map(str), st.sampled_from(["", "x", "1.5", " 1", "0x1"]))


def set_env(monkeypatch, env):
    """The launcher's variables as ``env`` says (None: unset)."""
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@given(rank=VALUES, world=VALUES, local=VALUES)
def test_launcher_variables_are_one_process_of_a_run_or_one_error(monkeypatch, rank, world, local):
    set_env(monkeypatch, {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": local})
    try:
        r, w, lr = launch_env()
    except UserError as e:
        assert "unset them to run a single process" in str(e)
        assert any(v is not None and f"={v!r}" in str(e) for v in (rank, world, local))
        return
    assert w >= 1 and 0 <= r < w and lr >= 0
    assert (r, w, lr) == (int(rank or 0), int(world or 1), int(local or 0))


LAUNCH = {"RANK": VALUES, "WORLD_SIZE": VALUES, "LOCAL_RANK": VALUES, "LOCAL_WORLD_SIZE": VALUES,
          "MASTER_ADDR": st.one_of(st.none(), st.sampled_from(["", " ", "127.0.0.1", "node-1"])),
          "MASTER_PORT": st.one_of(st.none(), st.sampled_from(["", "abc", "0", "1", "29500", "65535", "65536", "99999",
                                                               "-1"]))}


@given(env=st.fixed_dictionaries(LAUNCH), rendezvous=st.booleans())
def test_every_launcher_variable_is_checked_in_one_place(monkeypatch, env, rendezvous):
    """RANK and WORLD_SIZE without MASTER_ADDR, MASTER_PORT=abc or 99999 were tracebacks from
    torch.distributed; each bad value is now named in the one line."""
    set_env(monkeypatch, env)
    given_ = {k: v for k, v in env.items() if v is not None}

    def whole(v, low, high=10**9):
        try:
            return low <= int(v) <= high
        except ValueError:
            return False
    fine = all(whole(given_[k], low) for k, low in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0),
                                                   ("LOCAL_WORLD_SIZE", 1)) if k in given_)
    fine = fine and int(given_.get("RANK", 0)) < int(given_.get("WORLD_SIZE", 1)) and (
        "LOCAL_WORLD_SIZE" not in given_ or int(given_.get("LOCAL_RANK", 0)) < int(given_["LOCAL_WORLD_SIZE"]))
    if rendezvous and ("RANK" in given_ or "WORLD_SIZE" in given_):
        fine = fine and all(given_.get(k, "").strip() for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")) and \
            whole(given_.get("MASTER_PORT", ""), 1, 65535)
    try:
        launch_env(rendezvous)
    except UserError as e:
        assert not fine, e
        assert "\n" not in str(e) and "cannot describe one process of a run" in str(e)
        return
    assert fine


@pytest.mark.parametrize("env, says", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR is not set; MASTER_PORT is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "abc"}, "MASTER_PORT is not a whole"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT is not in 1..65535"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK is not set"),
])
def test_train_py_under_a_broken_launch_is_one_line_before_anything(tiny_dataset, tmp_path, monkeypatch, env, says):
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=says):
        train.main(["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path / "runs"), "--gpu_ids", "-1"])
    assert not os.path.exists(tmp_path / "runs")


def test_a_shard_named_by_the_environment_that_does_not_exist_is_one_line(scan_setup, monkeypatch):
    tmp, ckpt = scan_setup
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "2")  # rank 5 of 2 used to score a "shard 6 of 2" and never merge
    with pytest.raises(UserError, match="RANK='5', WORLD_SIZE='2' cannot describe one process"):
        predict.main([str(tmp / "imgs"), "--model_path", ckpt, "--output", str(tmp / "env")])
    assert not os.path.exists(f"{tmp / 'env'}.shard6of2.jsonl")


# ----------------------------------------------------------------------------- DDP

@pytest.mark.slow
def test_ddp_two_processes_gloo_trains_and_resumes(tiny_dataset, tmp_path):
    common = tiny_run(tiny_dataset, tmp_path, "--name", "ddp", "--loss_freq", "1")
    finish(torchrun("train.py", *common, "--niter", "1"))
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

    finish(torchrun("train.py", *common, "--niter", "2", "--continue_train"))
    state = torch.load(exp / "model_epoch_last.pth", weights_only=True)
    assert state["epoch"] == 2 and state["total_steps"] == 12
    assert "Resuming from" in (exp / "log.log").read_text()


@pytest.mark.slow
def test_ddp_batch_must_split_evenly(tiny_dataset, tmp_path):
    run = torchrun("train.py", *tiny_run(tiny_dataset, tmp_path, "--niter", "1", "--batch_size", "3"))
    assert "must divide by the 2 processes" in finish(run, ok=False)[0] and run.returncode != 0
